package stage

import (
	"errors"
	"fmt"

	"github.com/ldmirror/ldmirror/blockdev"
	"golang.org/x/sys/unix"
)

// kickEvery is how much the log grows before its new part is handed to
// writeback (sync_file_range): the disk writes it while the resync runs,
// and the flush at the commit waits only for the tail.
const kickEvery = 8 << 20

// WriteAt writes p at off: to the volume while nothing is staged, else to
// the log (and, once committed, to the volume too where the apply may
// have copied the block already).
func (a *Area) WriteAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), a.geom.Size); err != nil || len(p) == 0 {
		return 0, err
	}
	a.mu.Lock()
	if a.state == Idle {
		base := a.base
		a.mu.Unlock()
		return base.WriteAt(p, off)
	}
	defer a.mu.Unlock()
	if err := a.write(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// write stages p at off, run by run of blocks staged alike. a.mu is held.
func (a *Area) write(p []byte, off int64) error {
	bs := int64(a.geom.BlockSize)
	end := off + int64(len(p))
	applying := a.state == Applying
	part := func(first, last int64) (lo, hi int64) { return max(off, first*bs), min(end, (last+1)*bs) }
	for b := off / bs; b*bs < end; {
		slot, staged := a.index[uint32(b)]
		last := b
		switch {
		case staged && slot != zeroBlock:
			// Rewrite in place, over blocks whose data lie in a row.
			for (last+1)*bs < end {
				if s, ok := a.index[uint32(last+1)]; !ok || s != slot+(last+1-b)*bs {
					break
				}
				last++
			}
			lo, hi := part(b, last)
			if _, err := a.f.WriteAt(p[lo-off:hi-off], slot+lo-b*bs); err != nil {
				return fmt.Errorf("stage: write the log: %w", err)
			}
			if applying { // the apply may have copied it: the volume takes it too
				if _, err := a.base.WriteAt(p[lo-off:hi-off], lo); err != nil {
					return err
				}
			}
		case !staged && applying:
			// Committed: blocks the resync did not stage are the volume's.
			for (last+1)*bs < end {
				if _, ok := a.index[uint32(last+1)]; ok {
					break
				}
				last++
			}
			lo, hi := part(b, last)
			if _, err := a.base.WriteAt(p[lo-off:hi-off], lo); err != nil {
				return err
			}
		default:
			// Not staged yet (or staged as zeros): a new record.
			for (last+1)*bs < end {
				s, ok := a.index[uint32(last+1)]
				if ok && s != zeroBlock || !ok && applying {
					break
				}
				last++
			}
			if err := a.appendData(p, off, b, last); err != nil {
				return err
			}
			if applying {
				lo, hi := part(b, last)
				if _, err := a.base.WriteAt(p[lo-off:hi-off], lo); err != nil {
					return err
				}
			}
		}
		b = last + 1
	}
	return nil
}

// appendData appends a record of blocks first to last holding what p (at
// off) writes over them; a block p covers in part keeps the rest of what it
// held (the volume's data, or zeros). a.mu is held.
func (a *Area) appendData(p []byte, off, first, last int64) error {
	bs := int64(a.geom.BlockSize)
	end := off + int64(len(p))
	lo, hi := first*bs, (last+1)*bs
	data := p[max(lo-off, 0):min(hi-off, int64(len(p)))]
	if off > lo || end < hi {
		buf := make([]byte, hi-lo)
		for _, k := range []int64{first, last} {
			if off <= k*bs && end >= (k+1)*bs {
				continue // covered whole
			}
			if s, ok := a.index[uint32(k)]; ok && s == zeroBlock {
				continue // zeros
			}
			if _, err := a.base.ReadAt(buf[(k-first)*bs:(k-first+1)*bs], k*bs); err != nil {
				return fmt.Errorf("stage: read block %d to merge a partial write: %w", k, err)
			}
		}
		copy(buf[max(off, lo)-lo:], data)
		data = buf
	}
	at, err := a.appendRecord(kindData, uint32(first), uint32(last-first+1), data)
	if err != nil {
		return err
	}
	for k := first; k <= last; k++ {
		a.index[uint32(k)] = at + (k-first)*bs
	}
	return nil
}

// appendRecord appends a record and returns the offset of its data.
// a.mu is held.
func (a *Area) appendRecord(kind uint8, first, count uint32, data []byte) (int64, error) {
	var hdr [recordHeader]byte
	record{Kind: kind, Count: count, First: first, Began: a.hdr.Began}.put(hdr[:])
	iov := [][]byte{hdr[:]}
	if len(data) > 0 {
		iov = append(iov, data)
	}
	n := recordHeader + len(data)
	if w, err := unix.Pwritev(int(a.f.Fd()), iov, a.end); err != nil || w != n {
		if err == nil {
			err = fmt.Errorf("short write of %d of %d bytes", w, n)
		}
		return 0, fmt.Errorf("stage: append to the log: %w", err)
	}
	at := a.end + recordHeader
	a.end += int64(n)
	if a.end-a.kicked >= kickEvery {
		_ = unix.SyncFileRange(int(a.f.Fd()), a.kicked, a.end-a.kicked, unix.SYNC_FILE_RANGE_WRITE)
		a.kicked = a.end
	}
	return at, nil
}

// Trim discards n bytes at off: they read back as zeros.
func (a *Area) Trim(off, n int64) error {
	if err := blockdev.CheckRange(off, n, a.geom.Size); err != nil || n == 0 {
		return err
	}
	a.mu.Lock()
	if a.state == Idle {
		base := a.base
		a.mu.Unlock()
		return base.Trim(off, n)
	}
	defer a.mu.Unlock()
	bs := int64(a.geom.BlockSize)
	first, last := (off+bs-1)/bs, (off+n)/bs-1 // the blocks it covers whole
	if first > last {
		return a.write(make([]byte, n), off)
	}
	if lo := first * bs; lo > off {
		if err := a.write(make([]byte, lo-off), off); err != nil {
			return err
		}
	}
	if hi := (last + 1) * bs; hi < off+n {
		if err := a.write(make([]byte, off+n-hi), hi); err != nil {
			return err
		}
	}
	if a.state != Applying {
		if _, err := a.appendRecord(kindZeros, uint32(first), uint32(last-first+1), nil); err != nil {
			return err
		}
		for k := first; k <= last; k++ {
			a.index[uint32(k)] = zeroBlock
		}
		return nil
	}
	// Committed: the volume is trimmed, and the staged blocks among these
	// are staged as zeros, so that a replay of the apply trims them too.
	if err := a.base.Trim(first*bs, (last-first+1)*bs); err != nil {
		return err
	}
	for k := first; k <= last; k++ {
		if _, ok := a.index[uint32(k)]; !ok {
			continue
		}
		e := k
		for e < last {
			if _, ok := a.index[uint32(e+1)]; !ok {
				break
			}
			e++
		}
		if _, err := a.appendRecord(kindZeros, uint32(k), uint32(e-k+1), nil); err != nil {
			return err
		}
		for j := k; j <= e; j++ {
			a.index[uint32(j)] = zeroBlock
		}
		k = e
	}
	return nil
}

// ReadAt reads what the volume holds once the staged blocks are applied.
func (a *Area) ReadAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), a.geom.Size); err != nil || len(p) == 0 {
		return 0, err
	}
	a.mu.Lock()
	if a.state == Idle {
		base := a.base
		a.mu.Unlock()
		return base.ReadAt(p, off)
	}
	defer a.mu.Unlock()
	bs := int64(a.geom.BlockSize)
	end := off + int64(len(p))
	// from is where block k's current data is: the log (an offset), zeros,
	// or the volume (-2).
	const volume = -2
	from := func(k int64) int64 {
		s, ok := a.index[uint32(k)]
		if !ok || a.state == Applying && a.applied.Contains(uint32(k)) {
			return volume
		}
		return s
	}
	for b := off / bs; b*bs < end; {
		src := from(b)
		last := b
		for (last+1)*bs < end {
			next := from(last + 1)
			if src >= 0 && next != src+(last+1-b)*bs || src < 0 && next != src {
				break
			}
			last++
		}
		lo, hi := max(off, b*bs), min(end, (last+1)*bs)
		dst := p[lo-off : hi-off]
		var err error
		switch src {
		case volume:
			_, err = a.base.ReadAt(dst, lo)
		case zeroBlock:
			clear(dst)
		default:
			_, err = a.f.ReadAt(dst, src+lo-b*bs)
		}
		if err != nil {
			return 0, fmt.Errorf("stage: read block %d: %w", b, err)
		}
		b = last + 1
	}
	return len(p), nil
}

// Flush makes every completed write durable: the log's and the volume's.
func (a *Area) Flush() error {
	a.mu.Lock()
	f, base := a.f, a.base
	if f != nil {
		a.fileMu.RLock()
	}
	a.mu.Unlock()
	var err error
	if f != nil {
		err = unix.Fdatasync(int(f.Fd()))
		a.fileMu.RUnlock()
		if err != nil {
			err = fmt.Errorf("stage: flush the log: %w", err)
		}
	}
	return errors.Join(err, base.Flush())
}
