package probe

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Probe steps, named in results and errors.
const (
	StepConnect = "connect"
	StepBind    = "bind"
	StepRootDSE = "root DSE"
	StepRead    = "read"
	StepWrite   = "write"
)

// Defaults for a zero Config field.
const (
	DefaultTimeout   = 2 * time.Second
	DefaultInterval  = time.Second
	DefaultThreshold = 3
)

// Config says what a probe does.
type Config struct {
	// URL of the server: ldap://host:port or ldapi://%2Fpath%2Fsocket.
	URL string
	// BindDN and Password for a simple bind; empty BindDN probes anonymously.
	BindDN, Password string
	// ReadDN, if set, is an entry the probe reads (base search).
	ReadDN string
	// CanaryDN, if set, is an existing entry whose CanaryAttr the probe
	// replaces with the probe time: a write that must commit.
	CanaryDN string
	// CanaryAttr is the attribute written (default "description").
	CanaryAttr string
	// Timeout bounds one whole probe (default DefaultTimeout).
	Timeout time.Duration
	// Interval between probes of a Monitor (default DefaultInterval).
	Interval time.Duration
	// Threshold is how many consecutive failures make the server down
	// (default DefaultThreshold).
	Threshold int
}

func (c Config) withDefaults() Config {
	if c.CanaryAttr == "" {
		c.CanaryAttr = "description"
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Threshold <= 0 {
		c.Threshold = DefaultThreshold
	}
	return c
}

// StepError is a failed probe step.
type StepError struct {
	Step string
	Err  error
}

func (e *StepError) Error() string { return e.Step + ": " + e.Err.Error() }
func (e *StepError) Unwrap() error { return e.Err }

// Result is one probe's outcome.
type Result struct {
	At      time.Time
	Latency time.Duration
	Err     error // nil, or a *StepError
}

// Check runs one probe against cfg.URL, bounded by cfg.Timeout and ctx.
func Check(ctx context.Context, cfg Config) Result {
	cfg = cfg.withDefaults()
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	err := check(ctx, cfg)
	return Result{At: start, Latency: time.Since(start), Err: err}
}

func check(ctx context.Context, cfg Config) error {
	deadline, _ := ctx.Deadline()
	conn, err := ldap.DialURL(cfg.URL, ldap.DialWithDialer(&net.Dialer{Deadline: deadline}))
	if err != nil {
		return &StepError{StepConnect, err}
	}
	defer conn.Close()
	// go-ldap takes no context on Bind, Search or Modify: bound each
	// request by what is left of the probe, and close the connection if
	// ctx ends first.
	conn.SetTimeout(time.Until(deadline))
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	if cfg.BindDN != "" {
		if err := conn.Bind(cfg.BindDN, cfg.Password); err != nil {
			return &StepError{StepBind, err}
		}
	}
	dse, err := conn.Search(ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, 0, false,
		"(objectClass=*)", []string{"namingContexts"}, nil))
	if err != nil {
		return &StepError{StepRootDSE, err}
	}
	if len(dse.Entries) != 1 {
		return &StepError{StepRootDSE, fmt.Errorf("%d entries, want 1", len(dse.Entries))}
	}
	if cfg.ReadDN != "" {
		if _, err := conn.Search(ldap.NewSearchRequest(cfg.ReadDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, 0, false,
			"(objectClass=*)", []string{"1.1"}, nil)); err != nil {
			return &StepError{StepRead, err}
		}
	}
	if cfg.CanaryDN != "" {
		mod := ldap.NewModifyRequest(cfg.CanaryDN, nil)
		mod.Replace(cfg.CanaryAttr, []string{"ldmirror probe " + strconv.FormatInt(time.Now().UnixNano(), 10)})
		if err := conn.Modify(mod); err != nil {
			return &StepError{StepWrite, err}
		}
	}
	if ctx.Err() != nil {
		return &StepError{StepWrite, ctx.Err()}
	}
	return nil
}
