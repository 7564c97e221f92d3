package retrier

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"
)

// Config configures a Session. Only Primary is required.
type Config struct {
	// Primary and Secondary are LDAP URLs (ldap://, ldaps:// or ldapi://).
	// Without a Secondary, calls are retried on the primary alone.
	Primary, Secondary string

	// BindDN and BindPassword are the identity the session binds as on every
	// connection it opens. Empty means anonymous. Bind changes it.
	BindDN, BindPassword string

	// TLS is used for ldaps:// URLs and StartTLS. Nil means the system roots.
	TLS *tls.Config
	// StartTLS upgrades every ldap:// connection with the StartTLS operation.
	StartTLS bool

	// DialTimeout bounds one TCP (or unix socket) connection attempt.
	// Default 2 s.
	DialTimeout time.Duration
	// AttemptTimeout bounds the wait for each response of a request on one
	// server, and the whole setup of a connection (connect, TLS, bind).
	// A server that takes longer is taken as sick: the connection is
	// closed and the call goes on with the other server. Default 10 s.
	AttemptTimeout time.Duration
	// CallTimeout bounds a whole call, retries included, when the caller's
	// context has no earlier deadline. Default 30 s.
	CallTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between two rounds of
	// attempts on both servers; it doubles from MinBackoff up to MaxBackoff.
	// Defaults 50 ms and 1 s.
	MinBackoff, MaxBackoff time.Duration

	// IdempotentWrites applies the idempotent write rules to every write, not
	// only to retried ones.
	IdempotentWrites bool

	// FailbackInterval is how often, after a failover to the secondary, the
	// session checks whether the primary answers again; when it does, new
	// calls go to the primary. Default 5 s; negative disables failback.
	FailbackInterval time.Duration

	// HoldSignals are caught while the session is open. One that arrives
	// while calls are in flight is handled after they complete (at most
	// DrainTimeout later); calls started meanwhile fail with ErrDraining.
	HoldSignals []os.Signal
	// OnSignal handles a held signal. Nil re-raises it with its default
	// action (which for SIGTERM, SIGINT and SIGHUP ends the process).
	OnSignal func(os.Signal)
	// DrainTimeout bounds the wait for in-flight calls. Default 30 s.
	DrainTimeout time.Duration

	// Logger receives failover and retry events. Default slog.Default().
	Logger *slog.Logger

	// Group, if set, is shared with other sessions of the same servers:
	// after one of them fails over, the others send their calls to the
	// server that answered too (see Group). Nil: the session's own.
	Group *Group
}

// Defaults.
const (
	DefaultDialTimeout      = 2 * time.Second
	DefaultAttemptTimeout   = 10 * time.Second
	DefaultCallTimeout      = 30 * time.Second
	DefaultMinBackoff       = 50 * time.Millisecond
	DefaultMaxBackoff       = time.Second
	DefaultFailbackInterval = 5 * time.Second
	DefaultDrainTimeout     = 30 * time.Second
)

// ErrConfig reports an invalid Config.
var ErrConfig = errors.New("retrier: invalid config")

func (c Config) withDefaults() (Config, error) {
	if c.Primary == "" {
		return c, fmt.Errorf("%w: no primary URL", ErrConfig)
	}
	for _, u := range []string{c.Primary, c.Secondary} {
		if u == "" {
			continue
		}
		if _, err := parseURL(u); err != nil {
			return c, fmt.Errorf("%w: %q: %v", ErrConfig, u, err)
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.DialTimeout, DefaultDialTimeout)
	def(&c.AttemptTimeout, DefaultAttemptTimeout)
	def(&c.CallTimeout, DefaultCallTimeout)
	def(&c.MinBackoff, DefaultMinBackoff)
	def(&c.MaxBackoff, DefaultMaxBackoff)
	def(&c.FailbackInterval, DefaultFailbackInterval)
	def(&c.DrainTimeout, DefaultDrainTimeout)
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}
