package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/ldmirror/ldmirror/ldapagent/proxy"
	"github.com/ldmirror/ldmirror/ldapagent/retrier"
)

// retrierCommand is `ldmirror retrier`: the LDAP call retrier as a proxy.
func retrierCommand() *cli.Command {
	return &cli.Command{
		Name:  "retrier",
		Usage: "LDAP proxy that retries failed calls on the secondary server (see docs/retrier.md)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "ldap://127.0.0.1:3890", Usage: "`URL` to accept clients on: ldap://, ldaps:// or ldapi:// (a unix socket, path escaped: ldapi://%2Frun%2Fldmirror%2Fldapi)"},
			&cli.StringFlag{Name: "primary", Required: true, Usage: "primary server `URL` (ldap://, ldaps://, ldapi://)"},
			&cli.StringFlag{Name: "secondary", Usage: "secondary server `URL`"},
			&cli.StringFlag{Name: "tls-cert", Usage: "PEM certificate `file` for ldaps:// and StartTLS on the listening side"},
			&cli.StringFlag{Name: "tls-key", Usage: "PEM private key `file` for --tls-cert"},
			&cli.StringFlag{Name: "backend-ca", Usage: "PEM CA `file` to verify the servers' certificates (default: system roots)"},
			&cli.BoolFlag{Name: "backend-starttls", Usage: "use StartTLS on ldap:// connections to the servers"},
			&cli.StringFlag{Name: "backend-server-name", Usage: "`name` the servers' certificates must carry (default: the host of each server's URL)"},
			&cli.DurationFlag{Name: "dial-timeout", Value: retrier.DefaultDialTimeout, Usage: "bound on one TCP or unix socket connection to a server"},
			&cli.DurationFlag{Name: "attempt-timeout", Value: retrier.DefaultAttemptTimeout, Usage: "bound on setting up a server connection (connect, TLS, bind) and on the wait for each response"},
			&cli.DurationFlag{Name: "call-timeout", Value: retrier.DefaultCallTimeout, Usage: "bound on a whole call, retries included; then the client gets unavailable (52)"},
			&cli.DurationFlag{Name: "min-backoff", Value: retrier.DefaultMinBackoff, Usage: "first wait between two rounds of attempts"},
			&cli.DurationFlag{Name: "max-backoff", Value: retrier.DefaultMaxBackoff, Usage: "longest wait between two rounds of attempts"},
			&cli.DurationFlag{Name: "failback-interval", Value: retrier.DefaultFailbackInterval, Usage: "after a failover, how often to check the primary; negative disables failback"},
			&cli.BoolFlag{Name: "idempotent-writes", Usage: "apply the idempotent write rules to every write, not only to retried ones"},
			&cli.IntFlag{Name: "max-message-size", Value: proxy.DefaultMaxMessageSize, Usage: "largest request in bytes from a client bound with a DN and password; larger ones close the connection"},
			&cli.IntFlag{Name: "max-unbound-message-size", Value: proxy.DefaultMaxUnboundMessageSize, Usage: "largest request in bytes before a bind with a DN and password"},
			&cli.IntFlag{Name: "max-connections", Value: proxy.DefaultMaxConnections, Usage: "most client connections served at once; more get a Notice of Disconnection (busy)"},
			&cli.IntFlag{Name: "max-operations", Value: proxy.DefaultMaxOperations, Usage: "most operations in flight on one client connection; more are answered busy (51)"},
			&cli.DurationFlag{Name: "idle-timeout", Value: proxy.DefaultIdleTimeout, Usage: "close a client connection with nothing in flight that sends nothing for this long; negative: never"},
			&cli.DurationFlag{Name: "write-timeout", Value: proxy.DefaultWriteTimeout, Usage: "drop a client that does not take a response within this long (at most --idle-timeout)"},
			&cli.BoolFlag{Name: "require-tls-for-bind", Usage: "refuse a bind with a password on a connection without TLS (not ldapi) with confidentialityRequired (13); default: on with --tls-cert"},
			&cli.DurationFlag{Name: "session-lifetime", Usage: "end a client connection this long after its bind with a password, zeroing the password kept for replay; 0: no limit"},
			&cli.DurationFlag{Name: "drain-timeout", Value: retrier.DefaultDrainTimeout, Usage: "on SIGTERM/SIGINT/SIGHUP, how long to wait for operations in flight"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error"},
			&cli.StringFlag{Name: "cpu-profile", Hidden: true, Usage: "write a CPU profile (go tool pprof) to `file` until the proxy stops"},
		},
		Action: runRetrier,
	}
}

func runRetrier(cc *cli.Context) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(cc.String("log-level"))); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if path := cc.String("cpu-profile"); path != "" {
		stop, err := cpuProfile(path)
		if err != nil {
			return err
		}
		defer stop()
	}
	cfg, err := proxyConfig(cc, log)
	if err != nil {
		return err
	}
	srv, err := proxy.New(cfg)
	if err != nil {
		return err
	}
	l, err := listen(cc.String("listen"), cfg.TLS)
	if err != nil {
		return err
	}

	// Hold the signals from here on: they are handled by draining.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	log.Info("retrier listening", "addr", l.Addr().String(), "primary", cfg.Backend.Primary, "secondary", cfg.Backend.Secondary)

	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case sig := <-sigs:
		drain := cc.Duration("drain-timeout")
		log.Info("signal received; refusing new connections and draining", "signal", sig.String(), "drain", drain)
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			return fmt.Errorf("drain: operations still in flight after %v: %w", drain, err)
		}
		if err := <-served; err != nil && !errors.Is(err, proxy.ErrServerClosed) {
			return err
		}
		log.Info("retrier stopped")
		return nil
	}
}

// proxyConfig is the proxy's configuration from the flags.
func proxyConfig(cc *cli.Context, log *slog.Logger) (proxy.Config, error) {
	backend := retrier.Config{
		Primary:          cc.String("primary"),
		Secondary:        cc.String("secondary"),
		StartTLS:         cc.Bool("backend-starttls"),
		DialTimeout:      cc.Duration("dial-timeout"),
		AttemptTimeout:   cc.Duration("attempt-timeout"),
		CallTimeout:      cc.Duration("call-timeout"),
		MinBackoff:       cc.Duration("min-backoff"),
		MaxBackoff:       cc.Duration("max-backoff"),
		FailbackInterval: cc.Duration("failback-interval"),
		IdempotentWrites: cc.Bool("idempotent-writes"),
		Logger:           log,
	}
	var err error
	if backend.TLS, err = backendTLS(cc); err != nil {
		return proxy.Config{}, err
	}
	var serverTLS *tls.Config
	if cert, key := cc.String("tls-cert"), cc.String("tls-key"); cert != "" || key != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return proxy.Config{}, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		serverTLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	// With a certificate, passwords travel protected unless an operator
	// says otherwise.
	requireTLS := serverTLS != nil
	if cc.IsSet("require-tls-for-bind") {
		requireTLS = cc.Bool("require-tls-for-bind")
	}
	return proxy.Config{
		Backend:               backend,
		TLS:                   serverTLS,
		RequireTLSForBind:     requireTLS,
		MaxConnections:        cc.Int("max-connections"),
		MaxOperations:         cc.Int("max-operations"),
		MaxMessageSize:        cc.Int("max-message-size"),
		MaxUnboundMessageSize: cc.Int("max-unbound-message-size"),
		IdleTimeout:           cc.Duration("idle-timeout"),
		WriteTimeout:          cc.Duration("write-timeout"),
		SessionLifetime:       cc.Duration("session-lifetime"),
		Logger:                log,
	}, nil
}

// cpuProfile starts a CPU profile written to path; stop ends it.
func cpuProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}, nil
}

// backendTLS is the TLS configuration for the servers: --backend-ca and
// --backend-server-name, or nil (system roots, each URL's host).
func backendTLS(cc *cli.Context) (*tls.Config, error) {
	ca, name := cc.String("backend-ca"), cc.String("backend-server-name")
	if ca == "" && name == "" {
		return nil, nil
	}
	tc := &tls.Config{ServerName: name, MinVersion: tls.VersionTLS12}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("--backend-ca: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--backend-ca: no certificate in %s", ca)
		}
	}
	return tc, nil
}

// listen opens the listening socket for an ldap://, ldaps:// or ldapi://
// URL. An ldapi URL names a unix socket by its %2F-escaped path, as
// slapd's -h does.
func listen(raw string, serverTLS *tls.Config) (net.Listener, error) {
	if path, ok := strings.CutPrefix(raw, "ldapi://"); ok {
		return listenUnix(raw, path)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	host := u.Host
	if u.Port() == "" {
		port := "389"
		if u.Scheme == "ldaps" {
			port = "636"
		}
		host = net.JoinHostPort(u.Hostname(), port)
	}
	switch u.Scheme {
	case "ldap":
		return net.Listen("tcp", host)
	case "ldaps":
		if serverTLS == nil {
			return nil, errors.New("--listen ldaps:// needs --tls-cert and --tls-key")
		}
		l, err := net.Listen("tcp", host)
		if err != nil {
			return nil, err
		}
		return tls.NewListener(l, serverTLS), nil
	}
	return nil, fmt.Errorf("--listen %s: the scheme must be ldap://, ldaps:// or ldapi://", raw)
}

// listenUnix listens on the socket of an ldapi URL whose host part is
// escaped. A socket left by a proxy that died is removed; one that
// answers is in use. The socket is writable by everyone, like slapd's:
// clients authenticate by binding, and a directory that must not be
// reachable by every local user holds the socket in a restricted directory.
func listenUnix(raw, escaped string) (net.Listener, error) {
	escaped, _, _ = strings.Cut(escaped, "/")
	path, err := url.PathUnescape(escaped)
	if err != nil || path == "" {
		return nil, fmt.Errorf("--listen %s: want ldapi:// and the socket's path with / written %%2F, e.g. ldapi://%%2Frun%%2Fldmirror%%2Fldapi", raw)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("--listen %s: %s is in use", raw, path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("--listen %s: remove stale socket: %w", raw, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %w", raw, err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		l.Close()
		return nil, fmt.Errorf("--listen %s: %w", raw, err)
	}
	return l, nil
}
