package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"golang.org/x/sys/unix"
)

// A failing disk (docs/operations.md, "A failing disk"). Each data host's
// volume directory is on a file system of its own, a tmpfs a little larger
// than the volume, with a sparse backing file: the host needs space as its
// volume is first written. A disk-full round fills that file system with a
// filler file and writes blocks the host holds no space for, so that its
// write fails with ENOSPC as on a real full disk; the runbook then frees
// the space (removes the filler) and runs `ldmirror attach-disk`.
//
// The volume's workload soon writes every block of the ext4 and raw
// regions, after which the host needs no more space for them. The last
// growBlocks of the volume are the growth region: a round trims it through
// the primary's export (a discard, replicated: both hosts punch holes)
// before it fills the disk, and the grow writer then writes records into
// it, each a block the full host must allocate.

const (
	// growBlocks is the growth region's size in blocks (1 MiB).
	growBlocks = 256
	// growRate is the grow writer's writes per second: a few are enough to
	// fail the disk, and the primary goes on writing after that.
	growRate = 200
	// diskFailLimit bounds the wait for the full host's disk to fail once
	// the grow writer writes. Not failing is noted, not a failure: the
	// writes may have found space (a hole the trim did not leave).
	diskFailLimit = 15 * time.Second
	// attachEvery paces the runbook's attach-disk while a disk is failed.
	attachEvery = 2 * time.Second
)

// disk is the file system under one data host's volume directory.
type disk struct {
	mnt  string // the tmpfs mount point; the volume directory is mnt/vol
	size int64
}

func (d disk) volDir() string { return filepath.Join(d.mnt, "vol") }
func (d disk) filler() string { return filepath.Join(d.mnt, "filler") }

// usage is the file system's used and total bytes.
func (d disk) usage() (used, total int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(d.mnt, &st); err != nil {
		return 0, 0, err
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize, int64(st.Blocks) * st.Bsize, nil
}

// mountDisks mounts a tmpfs of size bytes for each data host under root
// and registers their unmount; before it, a campaign that keeps its
// volumes (a failure, --keep) copies them to root/vol.
func (c *campaign) mountDisks(ctx context.Context, size int64) error {
	c.disks = map[string]disk{}
	for _, h := range dataHosts() {
		d := disk{mnt: filepath.Join(c.root, "disk", h), size: size}
		if err := os.MkdirAll(d.mnt, 0o700); err != nil {
			return err
		}
		if _, err := run(ctx, 30*time.Second, "mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0700", size), "tmpfs", d.mnt); err != nil {
			return err
		}
		c.o.Cleanup(func() {
			if c.keepVolumes {
				dst := filepath.Join(c.root, "vol", h)
				if err := os.MkdirAll(filepath.Dir(dst), 0o755); err == nil {
					if out, err := run(context.Background(), 5*time.Minute, "cp", "-a", "--sparse=always", d.volDir(), dst); err != nil {
						c.logf("cleanup: keep %s's volume: %v %s", h, err, out)
					}
				}
			}
			if _, err := run(context.Background(), 30*time.Second, "umount", "-l", d.mnt); err != nil {
				c.logf("cleanup: %v", err)
			}
		})
		c.disks[h] = d
	}
	return nil
}

// fill takes every free byte of d with its filler file and returns how
// many it took. Other writers (the daemon's raft log) may take space
// meanwhile, so it tries again until nothing is free.
func fill(d disk) (int64, error) {
	f, err := os.OpenFile(d.filler(), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var took int64
	for range 50 {
		var st unix.Statfs_t
		if err := unix.Statfs(d.mnt, &st); err != nil {
			return took, err
		}
		free := int64(st.Bavail) * st.Bsize
		if free == 0 {
			return took, nil
		}
		err := unix.Fallocate(int(f.Fd()), 0, took, free)
		switch {
		case err == nil:
			took += free
		case errors.Is(err, unix.ENOSPC):
			// Taken meanwhile: statfs again.
		default:
			return took, fmt.Errorf("fallocate %s: %w", d.filler(), err)
		}
	}
	return took, fmt.Errorf("%s: space still free after 50 fallocates of the filler", d.mnt)
}

// holesIn reports whether path holds no data in [off, off+n): every block
// is a hole (never written, or trimmed).
func holesIn(path string, off, n int64) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return true, nil // no data after off
	}
	if err != nil {
		return false, err
	}
	return data >= off+n, nil
}

// trimGrowth discards the growth region through the primary's export (a
// hole punch, which the loop device's discard also sends) and waits until
// both backing files hold holes there. The region then reads as zeros on
// the primary: the grow writer's base is empty.
func (c *campaign) trimGrowth(ctx context.Context, r *roundRun) error {
	off, n := int64(c.grow.first)*recordSize, int64(c.grow.slots)*recordSize
	// fallocate(1) in a process of its own: the runner holds no export
	// descriptor while it starts commands (rawhelper.go).
	if _, err := run(ctx, 30*time.Second, "fallocate", "--punch-hole", "--offset", strconv.FormatInt(off, 10),
		"--length", strconv.FormatInt(n, 10), c.exportFile(r.P)); err != nil {
		return err
	}
	c.grow.base = slices.Repeat([]int64{noRecord}, c.grow.slots)
	var last error
	err := waitFor(ctx, 10*time.Second, "holes in the growth region of both backing files", func() bool {
		for _, h := range dataHosts() {
			ok, err := holesIn(filepath.Join(c.h.dir[h], "volume.img"), off, n)
			if err != nil || !ok {
				last = err
				return false
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("%w (%v)", err, last)
	}
	return nil
}

// diskFault fills the file system of the target's volume and writes blocks
// it has no space for; undo frees the space. The runbook's attach-disk
// comes in settle, once the host is secondary (a primary hands its role
// over first).
type diskFault struct {
	host   string
	filled bool
}

func (f *diskFault) inject(ctx context.Context, r *roundRun) error {
	f.host = r.hostsOf(r.spec.Target)[0]
	d := r.c.disks[f.host]
	if err := r.c.trimGrowth(ctx, r); err != nil {
		r.notef("the growth region was not trimmed on both hosts (%v): %s may have space for the grow writer's blocks", err, f.host)
	}
	took, err := fill(d)
	f.filled = true
	if err != nil {
		return err
	}
	used, total, _ := d.usage()
	r.notef("filled %s's file system: a filler of %.1f MiB, %.1f of %.1f MiB used", f.host, mib(took), mib(used), mib(total))
	r.injected = time.Now()
	r.wl.add(r.c.grow)
	r.diskHost = f.host
	var st string
	err = waitFor(ctx, diskFailLimit, f.host+"'s disk to fail", func() bool {
		s, err := r.c.h.status(ctx, f.host)
		if err != nil {
			return false
		}
		st = s.LastError
		return s.Disk == cluster.DiskFailed
	})
	if err != nil {
		r.notef("%s's status does not show its disk failed within %v (last error %q)", f.host, diskFailLimit, st)
		return nil
	}
	r.diskFailed = true
	if f.host == r.P {
		r.handOver = true
	}
	r.notef("%s's disk failed: %s", f.host, st)
	return nil
}

// undo removes the filler: the operator freed the space.
func (f *diskFault) undo(_ context.Context, r *roundRun) error {
	if !f.filled {
		return nil
	}
	d := r.c.disks[f.host]
	if err := os.Remove(d.filler()); err != nil {
		return err
	}
	used, total, _ := d.usage()
	r.notef("removed the filler on %s: %.1f of %.1f MiB used", f.host, mib(used), mib(total))
	return nil
}

// attachDisks is the runbook's step for a host whose disk failed, once its
// space is free (the fault undone) and it is secondary: `ldmirror
// attach-disk`, retried every attachEvery while it is refused.
func (c *campaign) attachDisks(ctx context.Context, r *roundRun, host string, st nodeDisk) {
	if st.disk != cluster.DiskFailed || st.primary || time.Since(r.attachTried[host]) < attachEvery {
		return
	}
	if r.attachTried == nil {
		r.attachTried = map[string]time.Time{}
	}
	r.attachTried[host] = time.Now()
	if r.diskHost != host {
		used, total, _ := c.disks[host].usage()
		r.notef("%s's disk failed outside a disk-full round of it (%.1f of %.1f MiB used): %s", host, mib(used), mib(total), st.lastError)
		r.strayDisk = true
	}
	out, err := c.h.cli(ctx, 30*time.Second, "attach-disk", "--dir", c.h.dir[host])
	if err != nil {
		r.notef("runbook: attach-disk on %s: %v", host, err)
		return
	}
	r.attached = append(r.attached, host)
	r.notef("runbook: attach-disk on %s: %s", host, strings.TrimSpace(out))
}

// nodeDisk is what attachDisks reads of a host's status.
type nodeDisk struct {
	disk      cluster.DiskState
	primary   bool
	lastError string
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }
