package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/internal/netns"
)

// setup builds the binary, the lab and the volumes, starts the witness and
// both daemons, makes a the first primary (forced: a new pair has no
// uptodate host), and makes the file system.
func (c *campaign) setup(ctx context.Context) error {
	bin := filepath.Join(c.root, "bin", "ldmirror")
	if err := buildBinary(ctx, bin); err != nil {
		return err
	}
	// c is the directory's client host: the retrier proxy runs there.
	c.lab = netns.NewLab(c.o, "a", "b", "w", "c")
	if err := c.mountDisks(ctx, c.opt.size+c.opt.headroom); err != nil {
		return err
	}
	var daemonX []string
	daemonX = append(daemonX, "--mode", c.opt.mode)
	if c.opt.mode == "async" {
		daemonX = append(daemonX, "--journal-size", c.opt.journalSize)
	}
	daemonX = append(daemonX, c.opt.daemonArgs...)
	dirs := map[string]string{"a": c.disks["a"].volDir(), "b": c.disks["b"].volDir(), "w": filepath.Join(c.root, "w")}
	h, err := newHosts(ctx, c.lab, bin, c.root, c.logs, strconv.FormatInt(c.opt.size, 10), dirs, daemonX, c.logf)
	if err != nil {
		return err
	}
	c.h = h
	// Cleanups run last registered first: the processes die before the
	// file system is released, so that no umount waits on a stopped daemon.
	c.o.Cleanup(func() { c.releaseMount(context.Background()) })
	c.o.Cleanup(h.Close)
	for _, host := range []string{"w", "b", "a"} {
		if err := h.start(ctx, host, 0); err != nil {
			return err
		}
	}
	if err := waitFor(ctx, 30*time.Second, "the members to join and a to be promoted", func() bool {
		_, err := h.cli(ctx, 10*time.Second, "promote", "a", "--force", "--reason", "initial sync source", "--control", h.control("a"))
		return err == nil
	}); err != nil {
		return err
	}
	c.primary = "a"
	c.smp = startSampler(h.status)
	c.o.Cleanup(c.smp.Close)
	if err := c.waitRedundant(ctx, "a", 60*time.Second); err != nil {
		return err
	}
	blocks := int(c.opt.size / recordSize)
	growFirst := blocks - growBlocks
	if err := c.newWriters(blocks, growFirst); err != nil {
		return err
	}
	if err := c.attach(ctx, "a"); err != nil {
		return err
	}
	// nodiscard and no lazy init: no background writes after mount that
	// would keep the hosts from being quiet when the volumes are compared.
	if _, err := run(ctx, 120*time.Second, "mkfs.ext4", "-q", "-F", "-b", "4096",
		"-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", c.dev, strconv.Itoa(c.fsBlocks)); err != nil {
		return err
	}
	if c.ldapEnabled() {
		if err := c.mount(ctx); err != nil {
			return err
		}
		if err := c.setupDirectory(ctx); err != nil {
			return err
		}
		c.ldapw = newLDAPWriter(c.ledger, c.dir, c.opt.ldapRate)
	}
	c.releaseMount(ctx)
	if _, err := c.quiesce(ctx, "a"); err != nil {
		return err
	}
	c.smp.drain()
	c.logf("setup: a primary, b in sync; ext4 on blocks 0-%d, raw records on blocks %d-%d, the growth region on blocks %d-%d",
		c.fsBlocks-1, c.fsBlocks, growFirst-1, growFirst, blocks-1)
	return nil
}

// buildBinary builds cmd/ldmirror of the module the runner belongs to, with
// the crash points compiled in (-tags failpoints): none is armed unless a
// run's environment names it (hosts.startArmed), and an unarmed point is
// one map lookup (internal/failpoint).
func buildBinary(ctx context.Context, out string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	mod, err := exec.CommandContext(ctx, goTool, "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(mod)) == "" || strings.TrimSpace(string(mod)) == os.DevNull {
		return fmt.Errorf("run from the ldmirror module (go env GOMOD: %q, %v)", strings.TrimSpace(string(mod)), err)
	}
	cmd := exec.CommandContext(ctx, goTool, "build", "-tags", "failpoints", "-o", out, "./cmd/ldmirror")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(mod)))
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build -tags failpoints ./cmd/ldmirror: %w\n%s", err, b)
	}
	return nil
}

// attach binds host's export to a loop device (ldmirror attach).
//
// The campaign keeps the device open until it detaches it. Other test
// runs on the machine attach and detach loop devices too, and one that
// detaches a device by a number it remembered may hit ours once the number
// was reused: the kernel then detaches it when its last user closes it,
// which, between an umount and e2fsck, left e2fsck no device
// (docs/reliability.md, "Found in the runner and the environment"). Held
// open, it stays ours until the campaign lets go.
func (c *campaign) attach(ctx context.Context, host string) error {
	var errs []error
	for range 3 {
		out, err := c.h.cli(ctx, 20*time.Second, "attach", "--dir", c.h.dir[host])
		if err != nil {
			return err
		}
		dev := strings.TrimSpace(out)
		f, err := os.Open(dev)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
		if err == nil && strings.TrimSpace(string(b)) == c.exportFile(host) {
			c.dev, c.devFile = dev, f
			return nil
		}
		f.Close()
		errs = append(errs, fmt.Errorf("%s is not bound to %s after attach (backing file %q, %v)", dev, c.exportFile(host), strings.TrimSpace(string(b)), err))
	}
	return errors.Join(errs...)
}

// mount mounts the attached loop device on the campaign's mount point.
func (c *campaign) mount(ctx context.Context) error {
	if _, err := run(ctx, 60*time.Second, "mount", "-t", "ext4", c.dev, c.mnt); err != nil {
		return err
	}
	c.mounted = true
	return nil
}

// releaseMount unmounts the file system and detaches the loop device, as
// the runbook's operator does before a host may turn secondary. A file
// system whose device died (its primary was killed) is detached lazily.
func (c *campaign) releaseMount(ctx context.Context) []string {
	var notes []string
	if c.mounted {
		if _, err := run(ctx, 60*time.Second, "umount", c.mnt); err != nil {
			notes = append(notes, fmt.Sprintf("umount failed, detached lazily: %v", err))
			_, _ = run(ctx, 30*time.Second, "umount", "-l", c.mnt)
		}
		c.mounted = false
	}
	if c.dev != "" {
		if _, err := c.h.cli(ctx, 20*time.Second, "detach", c.dev); err != nil {
			notes = append(notes, fmt.Sprintf("detach %s: %v", c.dev, err))
		}
		c.devFile.Close()
		// A device still open (udev probes it after the umount) detaches
		// when its last user closes it: until then attach finds it.
		backing := filepath.Join("/sys/block", filepath.Base(c.dev), "loop", "backing_file")
		if err := waitFor(ctx, 20*time.Second, c.dev+" to be detached", func() bool {
			_, err := os.Stat(backing)
			return errors.Is(err, os.ErrNotExist)
		}); err != nil {
			notes = append(notes, err.Error())
		}
		c.dev = ""
	}
	return notes
}

// newWriters makes the writers of the volume's regions: ext4 on the first
// three quarters, raw records up to growFirst, the growth region after it.
func (c *campaign) newWriters(blocks, growFirst int) (err error) {
	c.fsBlocks = blocks * 3 / 4
	if c.raw, err = newRawWriter(c.ledger, rawWriterID, "raw", c.fsBlocks, growFirst-c.fsBlocks, c.opt.rawRate); err != nil {
		return err
	}
	if c.grow, err = newRawWriter(c.ledger, growWriterID, "grow", growFirst, growBlocks, growRate); err != nil {
		return err
	}
	c.ext4 = newFileWriter(c.ledger)
	c.retained = map[int][]uint64{}
	return nil
}
