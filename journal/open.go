package journal

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Create makes a new journal at path, which must not exist.
func Create(path string, opt Options) (*Journal, error) {
	capacity := opt.Capacity
	if capacity == 0 {
		capacity = DefaultCapacity
	}
	if capacity < MinCapacity || capacity > 1<<40 {
		return nil, fmt.Errorf("journal capacity %d bytes: must be %d to %d", capacity, MinCapacity, int64(1)<<40)
	}
	first := opt.FirstSeq
	if first == 0 {
		first = 1
	}
	var idb [8]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Journal, error) {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("create journal %s: %w", path, err)
	}
	if err := f.Truncate(RingStart + capacity); err != nil {
		return fail(err)
	}
	sb := superblock{gen: 1, id: binary.BigEndian.Uint64(idb[:]) | 1, capacity: uint64(capacity), tailSeq: first, durable: first - 1,
		clean: true, authority: NoAuthority, boot: bootID(), reason: "new journal: no bitmap resync completed in it yet"}
	var b [superSize]byte
	sb.encode(b[:])
	if _, err := f.WriteAt(b[:], 0); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := syncDir(path); err != nil {
		return fail(err)
	}
	f.Close()
	return Open(path)
}

func syncDir(path string) error {
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Open opens the journal at path and finds its records: sequence numbers
// continue after the last valid one. A torn record at the end is dropped
// (see Recovered); a damaged record before it is an ErrCorrupt error.
func Open(path string) (*Journal, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	j, err := openFile(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	return j, nil
}

func openFile(f *os.File) (*Journal, error) {
	var slots [2][superSize]byte
	var sbs [2]superblock
	var errs [2]error
	for i := range slots {
		if _, err := f.ReadAt(slots[i][:], int64(i)*SlotSize); err != nil {
			errs[i] = err
			continue
		}
		sbs[i], errs[i] = decodeSuper(slots[i][:])
	}
	pick := -1
	for i := range sbs {
		if errs[i] == nil && (pick < 0 || sbs[i].gen > sbs[pick].gen) {
			pick = i
		}
	}
	if pick < 0 {
		return nil, fmt.Errorf("%w: slot 0: %v; slot 1: %v", ErrNotJournal, errs[0], errs[1])
	}
	sb := sbs[pick]
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() != RingStart+int64(sb.capacity) {
		return nil, fmt.Errorf("%w: file is %d bytes, the superblock says %d", ErrCorrupt, st.Size(), RingStart+int64(sb.capacity))
	}
	boot := bootID()
	j := &Journal{
		f:         f,
		id:        sb.id,
		seed:      idSum(sb.id),
		capacity:  sb.capacity,
		open:      sb.open + 1,
		tailSeq:   sb.tailSeq,
		tailPos:   sb.tailPos,
		sbGen:     sb.gen,
		safeSlot:  pick,
		synced:    make(chan struct{}),
		authority: sb.authority,
		stopped:   sb.stopped,
		reason:    sb.reason,
		boot:      boot,
	}
	j.recovery.Clean = sb.clean
	j.recovery.Rebooted = boot == [16]byte{} || sb.boot != boot
	j.bufs.init()
	j.handoff.budget = handoffBudget
	if err := j.scan(sb.durable); err != nil {
		return nil, err
	}
	// What the scan found is now made durable, and the new open counter
	// recorded, before any record of this session is written: a record
	// left behind by an earlier session after a torn one carries a lower
	// counter than the records that will follow it here. The superblock
	// also records this boot and that the journal is open (not clean).
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return nil, err
	}
	j.written, j.durable = j.nextSeq-1, j.nextSeq-1
	if err := j.writeSuper(j.tailSeq, j.tailPos, true); err != nil {
		return nil, err
	}
	return j, nil
}

// scan walks the records from the tail and sets the head.
func (j *Journal) scan(durable uint64) error {
	seq, pos := j.tailSeq, j.tailPos
	var hdr [HeaderSize]byte
	var data []byte
	var lastOpen uint32
	for {
		if pos-j.tailPos+HeaderSize > j.capacity {
			break // the ring is full up to here
		}
		if err := j.readRing(hdr[:], pos); err != nil {
			return err
		}
		reason, torn := "", true
		h, err := decodeHeader(hdr[:])
		switch {
		case err != nil:
			reason = err.Error()
			torn = hdr != [HeaderSize]byte{} // zeros: never written
		case h.seq != seq:
			reason = fmt.Sprintf("sequence number %d, expected %d", h.seq, seq)
			torn = h.seq > seq // lower: a record of an earlier lap of the ring
		case h.open < lastOpen || h.open >= j.open:
			reason = fmt.Sprintf("written by open %d after a record of open %d", h.open, lastOpen)
		case pos-j.tailPos+h.size() > j.capacity:
			reason = fmt.Sprintf("%d bytes do not fit in the ring", h.size())
		}
		if reason == "" {
			n := h.dataLen()
			if int64(cap(data)) < n {
				data = make([]byte, n)
			}
			data = data[:n]
			if err := j.readRing(data, pos+HeaderSize); err != nil {
				return err
			}
			if !verify(j.seed, &h, hdr[:], data) {
				reason = "checksum mismatch"
			}
		}
		if reason != "" {
			off := RingStart + int64(pos%j.capacity)
			if seq <= durable {
				return fmt.Errorf("%w: record seq %d at file offset %d: %s (records up to %d were durable)", ErrCorrupt, seq, off, reason, durable)
			}
			if torn {
				j.recovery.TornTail, j.recovery.TornOffset, j.recovery.TornReason = true, off, reason
			}
			break
		}
		j.positions.push(pos)
		lastOpen = h.open
		seq++
		pos += h.size()
		j.recovery.Records++
	}
	j.nextSeq, j.headPos = seq, pos
	return nil
}

// Discard stops the journal at path (see Stop), if there is one, so that
// it is never resumed: its host is about to write, or to receive writes,
// that it does not hold. Its numbering is kept. A journal that cannot be
// read is removed. It reports whether it stopped or removed a journal.
func Discard(path, why string) (bool, error) {
	j, err := Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		if rerr := os.Remove(path); rerr != nil {
			return false, errors.Join(err, rerr)
		}
		return true, syncDir(path)
	}
	stopped, _ := j.Stopped()
	if stopped {
		return false, j.Close()
	}
	return true, errors.Join(j.Stop(why), j.Close())
}

// bootID identifies this boot of the host (zero if unknown): a journal
// opened again in the same boot after its process died still has every
// record its appends wrote, in the page cache.
func bootID() [16]byte {
	var id [16]byte
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return id
	}
	h, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(string(b)), "-", ""))
	if err != nil || len(h) != len(id) {
		return id
	}
	copy(id[:], h)
	return id
}
