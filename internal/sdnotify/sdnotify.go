// Package sdnotify tells systemd how a service started with Type=notify
// is doing (sd_notify(3)): READY=1 once it serves, STATUS= lines,
// STOPPING=1, and WATCHDOG=1 keep-alives when the unit sets WatchdogSec.
// Outside systemd ($NOTIFY_SOCKET unset) every call does nothing.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Notifier sends to the socket systemd named. The zero value (and nil)
// sends nothing.
type Notifier struct {
	addr     *net.UnixAddr
	watchdog time.Duration
}

// FromEnv is the notifier systemd's environment describes: $NOTIFY_SOCKET,
// and $WATCHDOG_USEC if $WATCHDOG_PID is unset or this process.
func FromEnv() *Notifier {
	return New(os.Getenv("NOTIFY_SOCKET"), os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID"), os.Getpid())
}

// New is a notifier of socket (a path, or @name for an abstract socket;
// empty: none), with the watchdog systemd set in watchdogUSec for
// watchdogPID (empty: any).
func New(socket, watchdogUSec, watchdogPID string, pid int) *Notifier {
	n := &Notifier{}
	if socket != "" {
		n.addr = &net.UnixAddr{Name: socket, Net: "unixgram"}
	}
	usec, err := strconv.ParseInt(watchdogUSec, 10, 64)
	if err == nil && usec > 0 && (watchdogPID == "" || watchdogPID == strconv.Itoa(pid)) {
		n.watchdog = time.Duration(usec) * time.Microsecond
	}
	return n
}

// Enabled reports whether systemd listens.
func (n *Notifier) Enabled() bool { return n != nil && n.addr != nil }

// Send sends state lines ("READY=1", "STATUS=...") in one datagram.
func (n *Notifier) Send(state ...string) error {
	if !n.Enabled() {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(strings.Join(state, "\n"))); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// Status is a STATUS= line: newlines in s become spaces.
func Status(s string) string { return "STATUS=" + strings.ReplaceAll(s, "\n", " ") }

// States systemd knows.
const (
	Ready     = "READY=1"
	Stopping  = "STOPPING=1"
	Watchdog  = "WATCHDOG=1"
	Reloading = "RELOADING=1"
)

// WatchdogEvery is how often to send Watchdog: half the unit's WatchdogSec,
// or 0 without a watchdog.
func (n *Notifier) WatchdogEvery() time.Duration {
	if !n.Enabled() {
		return 0
	}
	return n.watchdog / 2
}
