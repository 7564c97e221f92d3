package stage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/internal/failpoint"
	"golang.org/x/sys/unix"
)

// State is where an Area is.
type State uint8

// States of an Area.
const (
	// Idle: nothing staged; writes go to the volume.
	Idle State = iota
	// Staging: writes go to the log; the volume keeps its data as of AsOf.
	Staging
	// Committing: the resync completed and the log is being made durable
	// and committed; it can no longer be discarded.
	Committing
	// Applying: the log is committed and being copied into the volume;
	// reads see it over the volume.
	Applying
)

func (s State) String() string {
	switch s {
	case Idle:
		return "idle"
	case Staging:
		return "staging"
	case Committing:
		return "committing"
	case Applying:
		return "applying"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Errors of an Area.
var (
	// ErrNoRoom refuses to stage a resync the file system has no room for.
	ErrNoRoom = errors.New("no room to stage the resync")
	// ErrCommitted refuses to discard (or to begin again) a log that was
	// committed: it is being applied.
	ErrCommitted = errors.New("the staged resync is committed and being applied")
	// ErrNotStaging reports a commit with nothing staged.
	ErrNotStaging = errors.New("no resync is staged")
	// ErrGeometry refuses a log made for another volume geometry.
	ErrGeometry = errors.New("the staging log does not match the volume")
)

// Geometry is the volume's size and block size, in bytes.
type Geometry struct {
	Size      int64
	BlockSize int
}

func (g Geometry) blocks() uint64 { return uint64(g.Size / int64(g.BlockSize)) }

// Begin says what a staged resync starts from.
type Begin struct {
	// AsOf is the time the volume's data is consistent as of: when it last
	// applied the primary's writes in order.
	AsOf time.Time
	// Source is the node the resync comes from.
	Source string
	// Unallocated is how many bytes of a sparse volume's file the file
	// system has not allocated yet: the apply may need up to that much
	// beside the log, on the same file system if the log is there.
	Unallocated int64
}

// Info is a snapshot of an Area.
type Info struct {
	State     State
	AsOf      time.Time // the volume's data is consistent as of
	Began     time.Time
	Committed time.Time
	Source    string
	Blocks    uint64 // blocks staged
	Bytes     int64  // bytes of the log (what the staging takes on disk)
	// ApplyDone and ApplyTotal count the blocks of the apply.
	ApplyDone, ApplyTotal uint64
	// Err is why the apply stopped (it is replayed at the next Open).
	Err error
}

// zeroBlock is the index entry of a block staged as zeros (trimmed).
const zeroBlock = -1

// Area is a volume with a staging log: a blockdev.Device whose writes go
// to the volume while Idle and to the log while a resync is staged. Its
// methods are safe for concurrent use; overlapping writes must be ordered
// by the caller, as for any Device (the replica does).
type Area struct {
	path string
	geom Geometry
	log  *slog.Logger

	mu      sync.Mutex
	base    blockdev.Device
	f       *os.File // the log, while not Idle
	state   State
	hdr     header
	index   map[uint32]int64 // staged block -> offset of its data in f, or zeroBlock
	applied *roaring.Bitmap  // while Applying: blocks copied into the volume
	end     int64            // where the next record goes
	kicked  int64            // the log up to here was handed to writeback
	done    chan struct{}    // closed when the apply finished; nil when none runs
	total   uint64
	err     error

	fileMu sync.RWMutex // held (read) while f is flushed outside mu, (write) to close it

	cancel context.CancelFunc
	wg     sync.WaitGroup // the apply
}

// Open opens the staging area of the volume base, whose log is the file at
// path. A log left by a previous run is read back: a staged resync stays
// staged (the volume still holds its older data), a committed one is
// applied again from its start, in the background.
func Open(path string, base blockdev.Device, g Geometry, log *slog.Logger) (*Area, error) {
	if log == nil {
		log = slog.Default()
	}
	if g.BlockSize <= 0 || g.Size <= 0 || g.Size%int64(g.BlockSize) != 0 {
		return nil, fmt.Errorf("%w: volume of %d bytes in blocks of %d", ErrGeometry, g.Size, g.BlockSize)
	}
	a := &Area{path: path, geom: g, log: log, base: base}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return a, nil
	}
	if err != nil {
		return nil, err
	}
	h, ok, err := readHeader(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	if !ok {
		// A Begin that died before its header was durable: nothing was
		// staged in it.
		f.Close()
		return a, errors.Join(os.Remove(path), syncDir(filepath.Dir(path)))
	}
	if h.BlockSize != uint32(g.BlockSize) || h.Size != g.Size {
		f.Close()
		return nil, fmt.Errorf("%w: %s is for %d bytes in blocks of %d, the volume is %d bytes in blocks of %d",
			ErrGeometry, path, h.Size, h.BlockSize, g.Size, g.BlockSize)
	}
	a.f, a.hdr, a.index = f, h, map[uint32]int64{}
	if err := a.scan(); err != nil {
		f.Close()
		return nil, err
	}
	a.state = Staging
	if h.State == diskCommitted {
		a.startApply()
		log.Warn("a committed resync was not fully applied: applying it again", "log", path, "blocks", len(a.index))
	} else {
		log.Info("a staged resync is kept: the volume holds its data as of the time below until the resync completes",
			"as_of", h.AsOf, "blocks", len(a.index), "source", h.Source)
	}
	return a, nil
}

// readHeader reads the valid header slot with the higher sequence number;
// ok is false if neither is valid.
func readHeader(r io.ReaderAt) (header, bool, error) {
	var best header
	ok := false
	b := make([]byte, 2*headerSize)
	n, err := r.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return best, false, err
	}
	for slot := range 2 {
		if (slot+1)*headerSize > n {
			break
		}
		h, err := parseHeader(b[slot*headerSize : (slot+1)*headerSize])
		if err == nil && (!ok || h.Seq > best.Seq) {
			best, ok = h, true
		}
	}
	return best, ok, nil
}

// scan rebuilds the index from the records, up to the first that does not
// decode (a record torn by a crash, or the end).
func (a *Area) scan() error {
	st, err := a.f.Stat()
	if err != nil {
		return err
	}
	a.end, err = scanRecords(a.f, st.Size(), a.hdr.Began, a.geom, a.index)
	a.kicked = a.end
	return err
}

// scanRecords indexes the records of the log that began at began, in r of
// size bytes, and returns where they end.
func scanRecords(r io.ReaderAt, size, began int64, g Geometry, index map[uint32]int64) (int64, error) {
	bs := int64(g.BlockSize)
	b := make([]byte, recordHeader)
	off := int64(recordStart)
	for off+recordHeader <= size {
		if _, err := r.ReadAt(b, off); err != nil {
			return off, err
		}
		rec, err := parseRecord(b, began, g.blocks())
		if err != nil {
			break
		}
		data := int64(0)
		if rec.Kind == kindData {
			data = int64(rec.Count) * bs
		}
		if off+recordHeader+data > size {
			break // its data was cut short
		}
		for i := range rec.Count {
			if rec.Kind == kindData {
				index[rec.First+i] = off + recordHeader + int64(i)*bs
			} else {
				index[rec.First+i] = zeroBlock
			}
		}
		off += recordHeader + data
	}
	return off, nil
}

// Info returns a snapshot.
func (a *Area) Info() Info {
	a.mu.Lock()
	defer a.mu.Unlock()
	in := Info{State: a.state, Err: a.err}
	if a.state == Idle {
		return in
	}
	in.AsOf, in.Began, in.Committed, in.Source = a.hdr.AsOf, fromUnixNano(a.hdr.Began), a.hdr.Committed, a.hdr.Source
	in.Blocks, in.Bytes = uint64(len(a.index)), a.end
	if a.state == Applying {
		in.ApplyDone, in.ApplyTotal = a.applied.GetCardinality(), a.total
	}
	return in
}

// Begin starts staging a resync that will write about need bytes, unless
// one is staged already (then it goes on: a resync that resumes keeps what
// it staged). The file system must have room for need bytes and the
// records' headers, which are reserved now; else it fails with ErrNoRoom.
// It fails with ErrCommitted while a committed log is being applied.
func (a *Area) Begin(need int64, b Begin) (Info, error) {
	a.mu.Lock()
	switch a.state {
	case Staging:
		a.mu.Unlock()
		return a.Info(), nil
	case Committing, Applying:
		a.mu.Unlock()
		return a.Info(), ErrCommitted
	}
	err := a.create(need, b)
	a.mu.Unlock()
	if err != nil {
		return Info{}, err
	}
	a.log.Info("staging a resync: the volume keeps its data as of the time below until it completes", "as_of", b.AsOf, "source", b.Source, "need_bytes", need)
	return a.Info(), nil
}

// Room is what staging need bytes takes on disk: the blocks, a record
// header for each in the worst case (scattered blocks), and the log's
// headers.
func (a *Area) Room(need int64) int64 {
	blocks := (need + int64(a.geom.BlockSize) - 1) / int64(a.geom.BlockSize)
	return need + blocks*recordHeader + recordStart
}

// create makes a new log for need bytes. a.mu is held.
func (a *Area) create(need int64, b Begin) error {
	dir := filepath.Dir(a.path)
	room := a.Room(need)
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return fmt.Errorf("stage: free space on %s: %w", dir, err)
	}
	// The apply fills holes of a sparse volume: room for those too, or
	// an apply after the commit could fail for space.
	if free, total := int64(fs.Bavail)*fs.Bsize, room+min(need, b.Unallocated); free < total {
		return fmt.Errorf("%w: it takes %s on %s (%s of log, %s for the apply into the sparse volume), %s is free there",
			ErrNoRoom, mib(total), dir, mib(room), mib(total-room), mib(free))
	}
	f, err := os.OpenFile(a.path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("stage: %w", err)
	}
	fail := func(err error) error {
		f.Close()
		os.Remove(a.path)
		return err
	}
	// Reserve the room, so that the file system cannot fill under the
	// resync (beyond the writes the application adds meanwhile).
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, room); errors.Is(err, unix.ENOSPC) {
		return fail(fmt.Errorf("%w: it takes %s on %s: %w", ErrNoRoom, mib(room), dir, err))
	} else if err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		return fail(fmt.Errorf("stage: reserve %s: %w", mib(room), err))
	}
	h := header{State: diskStaging, BlockSize: uint32(a.geom.BlockSize), Seq: 1, Size: a.geom.Size,
		AsOf: b.AsOf.UTC(), Began: time.Now().UnixNano(), Source: b.Source}
	if err := writeHeader(f, h); err != nil {
		return fail(err)
	}
	if err := syncDir(dir); err != nil {
		return fail(err)
	}
	a.f, a.hdr, a.state = f, h, Staging
	a.index, a.applied, a.err = map[uint32]int64{}, nil, nil
	a.end, a.kicked = recordStart, recordStart
	return nil
}

// writeHeader writes h into its slot and makes it durable.
func writeHeader(f *os.File, h header) error {
	if _, err := f.WriteAt(h.marshal(), int64(h.Seq%2)*headerSize); err != nil {
		return fmt.Errorf("stage: write header: %w", err)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return fmt.Errorf("stage: flush header: %w", err)
	}
	return nil
}

// Discard drops an uncommitted log: the volume keeps the data it had, as
// of Info().AsOf. It returns the blocks that were staged, which the
// volume's data lacks again. It fails with ErrCommitted once the log was
// committed.
func (a *Area) Discard() (Info, *roaring.Bitmap, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch a.state {
	case Idle:
		return Info{}, roaring.New(), nil
	case Committing, Applying:
		return Info{State: a.state}, nil, ErrCommitted
	}
	in := Info{State: Staging, AsOf: a.hdr.AsOf, Began: fromUnixNano(a.hdr.Began), Source: a.hdr.Source, Blocks: uint64(len(a.index)), Bytes: a.end}
	staged := roaring.New()
	for k := range a.index {
		staged.Add(k)
	}
	if err := a.remove(); err != nil {
		return in, nil, err
	}
	a.log.Warn("staged resync discarded: the volume keeps its data as of the time below", "as_of", in.AsOf, "blocks", in.Blocks)
	return in, staged, nil
}

// remove deletes an uncommitted log. a.mu is held.
func (a *Area) remove() error {
	failpoint.Crash("stage-discard-before-remove")
	return a.removeLog()
}

// removeLog deletes the log and forgets it. a.mu is held.
func (a *Area) removeLog() error {
	err := os.Remove(a.path)
	if err == nil {
		err = syncDir(filepath.Dir(a.path))
	}
	if err != nil {
		return fmt.Errorf("stage: remove %s: %w", a.path, err)
	}
	a.fileMu.Lock()
	a.f.Close()
	a.fileMu.Unlock()
	a.f, a.state, a.index, a.applied = nil, Idle, nil, nil
	a.end, a.kicked, a.total = 0, 0, 0
	return nil
}

// SetBase replaces the volume under the Area (a disk attached again).
func (a *Area) SetBase(dev blockdev.Device) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.base = dev
}

// Size is the volume's size in bytes.
func (a *Area) Size() int64 { return a.geom.Size }

// Close stops a running apply (the next Open applies again) and closes the
// log; the volume stays open.
func (a *Area) Close() error {
	a.mu.Lock()
	if a.cancel != nil {
		a.cancel()
	}
	a.mu.Unlock()
	a.wg.Wait()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.f == nil {
		return nil
	}
	a.fileMu.Lock()
	defer a.fileMu.Unlock()
	err := a.f.Close()
	a.f = nil
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// mib formats a byte count for operators.
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
