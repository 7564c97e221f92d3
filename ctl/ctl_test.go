package ctl

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/ldapagent/agent"
	"github.com/ldmirror/ldmirror/node"
)

// fakeHost answers the node routes with fixed results or err.
type fakeHost struct {
	err  error
	full bool // the last Resync's full argument
}

func (h *fakeHost) Status() node.Status { return node.Status{Node: "a", Role: cluster.RolePrimary} }
func (h *fakeHost) Verify(context.Context) (node.VerifyResult, error) {
	return node.VerifyResult{Blocks: 10, OutOfSync: 1}, h.err
}
func (h *fakeHost) Resync(_ context.Context, full, _ bool) (node.ResyncResult, error) {
	h.full = full
	return node.ResyncResult{Blocks: 3}, h.err
}
func (h *fakeHost) RequestSwap(context.Context, bool) (cluster.Epoch, error) { return 7, h.err }
func (h *fakeHost) CheckDemote(string, bool) error                           { return h.err }
func (h *fakeHost) RetryAgent(context.Context) (agent.Status, error)         { return agent.Status{}, h.err }
func (h *fakeHost) Attach() (string, error)                                  { return "/dev/loop7", h.err }
func (h *fakeHost) AttachDisk(context.Context, bool) error                   { return h.err }
func (h *fakeHost) AbortResync(context.Context) (node.AbortResult, error) {
	return node.AbortResult{}, h.err
}
func (h *fakeHost) CheckPromote(string, bool) (string, error) { return "", h.err }

// fakeMember answers the cluster routes; Promote refuses with err.
type fakeMember struct {
	err      error
	demoted  cluster.Epoch // the epoch the last Demote named
	deadline time.Duration // the time left when the last command ran
}

func (m *fakeMember) Status() cluster.Status { return cluster.Status{NodeID: "w"} }
func (m *fakeMember) Consistent(context.Context) (cluster.VolumeState, error) {
	return cluster.VolumeState{Primary: "a", Epoch: 4}, nil
}
func (m *fakeMember) Members(context.Context) ([]cluster.Member, error) {
	return []cluster.Member{{ID: "w", Voter: true}}, nil
}
func (m *fakeMember) Bootstrap(context.Context) error      { return m.err }
func (m *fakeMember) Join(context.Context, string) error   { return m.err }
func (m *fakeMember) Remove(context.Context, string) error { return m.err }
func (m *fakeMember) Promote(ctx context.Context, node string, _ bool, _ string) (cluster.Epoch, error) {
	if d, ok := ctx.Deadline(); ok {
		m.deadline = time.Until(d)
	}
	return 5, m.err
}
func (m *fakeMember) Demote(_ context.Context, _ string, e cluster.Epoch) (cluster.Epoch, error) {
	m.demoted = e
	return e + 1, m.err
}

func serve(t *testing.T, h Host, m Member) *Client {
	t.Helper()
	path := filepath.Join(t.TempDir(), "control.sock")
	s, err := Serve(path, Handler(Routes{Host: h, Member: m}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return NewClient(path)
}

// TestErrorsRoundTrip: every sentinel error the server answers with comes
// back as an error that errors.Is recognizes, with the server's message.
func TestErrorsRoundTrip(t *testing.T) {
	for _, c := range codes {
		t.Run(c.code, func(t *testing.T) {
			sent := fmt.Errorf("verify: %w: details", c.err)
			cl := serve(t, &fakeHost{err: sent}, nil)
			_, err := cl.Verify(context.Background())
			if !errors.Is(err, c.err) {
				t.Fatalf("error %v does not unwrap to %v", err, c.err)
			}
			if err.Error() != sent.Error() {
				t.Fatalf("message %q, want %q", err, sent)
			}
		})
	}
	cl := serve(t, &fakeHost{err: errors.New("disk on fire")}, nil)
	if _, err := cl.Verify(context.Background()); err == nil || err.Error() != "disk on fire" {
		t.Fatalf("an error without a code = %v, want its message", err)
	}
}

func TestHostRoutes(t *testing.T) {
	h := &fakeHost{}
	cl := serve(t, h, nil)
	ctx := context.Background()
	if st, err := cl.Status(ctx); err != nil || st.Node != "a" {
		t.Fatalf("status = %+v, %v", st, err)
	}
	if res, err := cl.Resync(ctx, true, false); err != nil || res.Blocks != 3 || !h.full {
		t.Fatalf("resync = %+v, %v (full passed: %v)", res, err, h.full)
	}
	if res, err := cl.Swap(ctx, false); err != nil || res.Epoch != 7 {
		t.Fatalf("swap = %+v, %v", res, err)
	}
	if _, err := cl.Cluster(ctx, false, time.Second); err == nil {
		t.Fatal("a host without a member answered /cluster")
	}
}

func TestMemberRoutes(t *testing.T) {
	m := &fakeMember{}
	cl := serve(t, nil, m)
	ctx := context.Background()
	v, err := cl.Cluster(ctx, true, time.Second)
	if err != nil || !v.Consistent || v.Volume.Epoch != 4 || len(v.Members) != 1 {
		t.Fatalf("cluster view = %+v, %v", v, err)
	}
	if e, err := cl.Promote(ctx, "b", false, "", 3*time.Second); err != nil || e != 5 {
		t.Fatalf("promote = %d, %v", e, err)
	}
	if m.deadline <= 0 || m.deadline > 3*time.Second {
		t.Fatalf("promote ran with %v left, want the request's 3 s", m.deadline)
	}
	if e, err := cl.Demote(ctx, "a", 0, false, time.Second); err != nil || e != 5 || m.demoted != 4 {
		t.Fatalf("demote in the current epoch = %d, %v (named %d, want 4)", e, err, m.demoted)
	}
	if _, err := cl.Promote(ctx, "b", true, " ", time.Second); !errors.Is(err, cluster.ErrInvalidCommand) {
		t.Fatalf("forced promotion without a reason = %v, want ErrInvalidCommand", err)
	}
	if err := cl.Join(ctx, "", time.Second); !errors.Is(err, cluster.ErrInvalidCommand) {
		t.Fatalf("join without an address = %v, want ErrInvalidCommand", err)
	}
	m.err = fmt.Errorf("promote b: %w", cluster.ErrNotUpToDate)
	if _, err := cl.Promote(ctx, "b", false, "", time.Second); !errors.Is(err, cluster.ErrNotUpToDate) {
		t.Fatalf("refused promotion = %v, want ErrNotUpToDate", err)
	}
	if _, err := cl.Status(ctx); err == nil {
		t.Fatal("a member without a host answered /status")
	}
}

func TestNoProcess(t *testing.T) {
	cl := NewClient(filepath.Join(t.TempDir(), "control.sock"))
	if _, err := cl.Status(context.Background()); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("status with no process = %v, want ErrNoProcess", err)
	}
}

func TestSocketInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "control.sock")
	s, err := Serve(path, Handler(Routes{Host: &fakeHost{}}))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Serve(path, Handler(Routes{Host: &fakeHost{}})); err == nil {
		t.Fatal("a second server took a live socket")
	}
}

// TestSocketNeverWide: the control socket appears at its path only by a
// rename, already mode 0600, even under umask 0; nothing else is left in
// the directory.
func TestSocketNeverWide(t *testing.T) {
	old := unix.Umask(0)
	defer unix.Umask(old)
	dir := t.TempDir()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Skipf("inotify: %v", err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "control.sock")
	srv, err := Serve(path, Handler(Routes{Host: &fakeHost{}}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("control socket mode %v, %v; want a 0600 socket", fi.Mode(), err)
	}
	buf := make([]byte, 4096)
	n, err := unix.Read(fd, buf)
	if err != nil {
		t.Fatal(err)
	}
	var created, moved []string
	for off := 0; off < n; {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
		if ev.Mask&unix.IN_CREATE != 0 {
			created = append(created, name)
		}
		if ev.Mask&unix.IN_MOVED_TO != 0 {
			moved = append(moved, name)
		}
		off += unix.SizeofInotifyEvent + int(ev.Len)
	}
	if slices.Contains(created, "control.sock") || !slices.Contains(moved, "control.sock") {
		t.Fatalf("created %v, moved in %v: the socket must only be moved into place", created, moved)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want the socket alone", len(entries))
	}
	if _, err := NewClient(path).Status(context.Background()); err != nil {
		t.Fatalf("status through the socket: %v", err)
	}
}
