package retrier

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Sentinel errors callers act on.
var (
	// ErrAllServersFailed: the call's deadline passed while every server
	// failed with a retryable error. The error is an *AllServersError.
	ErrAllServersFailed = errors.New("all LDAP servers failed")
	// ErrClosed: the session is closed.
	ErrClosed = errors.New("retrier: session closed")
	// ErrDraining: a held signal is pending; no new calls are accepted.
	ErrDraining = errors.New("retrier: draining for a signal")
	// ErrCertificate: a server's TLS certificate does not verify against
	// the configured CAs and server name. That is a configuration error,
	// which no retry can fix: the call fails at once, and the error, which
	// wraps crypto/tls's, is logged once per Group (issue 18, defect 3).
	ErrCertificate = errors.New("server certificate does not verify")
)

// LDAP result codes the retrier treats as "server not available".
const (
	resultServerDown = 81 // LDAP_SERVER_DOWN of the C API; relayed by some proxies
)

// Retryable reports whether err, returned by a call on one server, means the
// call should be tried again (on the other server, then with backoff):
//
//   - connection errors and timeouts: any error that is not an *ldap.Error,
//     and ldap.ErrorNetwork (200);
//   - busy (51), unavailable (52) and server down (81);
//   - unwillingToPerform (53) for writes only: the answer of a read-only or
//     standby server. For reads and binds 53 is a final answer.
//
// Every other result code is final and returned unchanged.
func Retryable(err error, write bool) bool {
	if err == nil {
		return false
	}
	var fe *finalError
	if errors.As(err, &fe) || errors.Is(err, ErrCertificate) {
		return false
	}
	var le *ldap.Error
	if !errors.As(err, &le) {
		return true
	}
	switch le.ResultCode {
	case ldap.ErrorNetwork, ldap.LDAPResultBusy, ldap.LDAPResultUnavailable, resultServerDown:
		return true
	case ldap.LDAPResultUnwillingToPerform:
		return write
	}
	return false
}

// connectionError reports whether err means the connection itself is
// unusable, so the next attempt on that server must redial. The end of the
// call's context is not: the operation was abandoned on the server and the
// connection serves the next call.
func connectionError(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var le *ldap.Error
	return !errors.As(err, &le) || le.ResultCode == ldap.ErrorNetwork
}

// finalError marks an error that must not be retried: the caller's own
// (a search callback's).
type finalError struct{ err error }

func (e *finalError) Error() string { return e.err.Error() }
func (e *finalError) Unwrap() error { return e.err }

// ServerError is the last error of a call on one server.
type ServerError struct {
	URL string
	Err error // nil if the server was not tried
}

// AllServersError is returned when a call's deadline passes and no server
// completed it. It matches ErrAllServersFailed with errors.Is, and the
// servers' last errors and the context error with errors.Is/As.
type AllServersError struct {
	Op       string
	Attempts int
	Elapsed  time.Duration
	Servers  []ServerError
	Cause    error // the context's error
}

func (e *AllServersError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ldap %s: all servers failed (%d attempts in %.1f s)", e.Op, e.Attempts, e.Elapsed.Seconds())
	for _, s := range e.Servers {
		if s.Err == nil {
			fmt.Fprintf(&b, "; %s: not tried", s.URL)
			continue
		}
		fmt.Fprintf(&b, "; %s: %v", s.URL, s.Err)
	}
	return b.String()
}

// Unwrap lets errors.Is/As see ErrAllServersFailed, the cause and the
// servers' errors.
func (e *AllServersError) Unwrap() []error {
	errs := []error{ErrAllServersFailed}
	if e.Cause != nil {
		errs = append(errs, e.Cause)
	}
	for _, s := range e.Servers {
		if s.Err != nil {
			errs = append(errs, s.Err)
		}
	}
	return errs
}
