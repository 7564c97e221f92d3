package scoreboard

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/RoaringBitmap/roaring/v2"
)

// Format writes an empty scoreboard (nothing out of sync, no hot extent) to
// st. name is used in errors. The superblock is written and synced last, so
// a crash during Format leaves a store that Open rejects, never a half one.
func Format(st Store, name string, geom Geometry, opts Options) error {
	geom = geom.withDefaults()
	if err := geom.validate(); err != nil {
		return fmt.Errorf("scoreboard %s: %w", name, err)
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return err
	}
	var nb [8]byte
	if _, err := rand.Read(nb[:]); err != nil {
		return fmt.Errorf("scoreboard %s: nonce: %w", name, err)
	}
	sb := superblock{version: FormatVersion, nonce: binary.LittleEndian.Uint64(nb[:]), geom: geom,
		layout: newLayout(geom, uint32(opts.ALSlots))}

	empty := roaring.New()
	slot, err := encodeMap(nil, empty, sb.nonce, 1, sb.layout.slotCap)
	if err != nil {
		return fmt.Errorf("scoreboard %s: %w", name, err)
	}
	if _, err := st.WriteAt(slot, sb.layout.slotOffs[1]); err != nil {
		return fmt.Errorf("scoreboard %s: write map slot: %w", name, err)
	}
	page := make([]byte, pageSize)
	t := txn{number: 1, clean: true}
	t.encode(page, sb.nonce)
	if _, err := st.WriteAt(page, sb.layout.alOff+pageSize*int64(1%sb.layout.alSlots)); err != nil {
		return fmt.Errorf("scoreboard %s: write activity log: %w", name, err)
	}
	if err := st.Sync(); err != nil {
		return fmt.Errorf("scoreboard %s: sync: %w", name, err)
	}
	sb.encode(page)
	if _, err := st.WriteAt(page, 0); err != nil {
		return fmt.Errorf("scoreboard %s: write superblock: %w", name, err)
	}
	if err := st.Sync(); err != nil {
		return fmt.Errorf("scoreboard %s: sync: %w", name, err)
	}
	return nil
}

// Create makes a new metadata file at path (it must not exist), formats it
// and opens it.
func Create(path string, geom Geometry, opts Options) (*Scoreboard, error) {
	geom = geom.withDefaults()
	if err := geom.validate(); err != nil {
		return nil, fmt.Errorf("scoreboard %s: %w", path, err)
	}
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("scoreboard: %w", err)
	}
	fail := func(err error) (*Scoreboard, error) {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	if err := lock(f); err != nil {
		return fail(err)
	}
	if err := f.Truncate(newLayout(geom, uint32(o.ALSlots)).size); err != nil {
		return fail(fmt.Errorf("scoreboard %s: size: %w", path, err))
	}
	if err := Format(fileStore{f}, path, geom, opts); err != nil {
		return fail(err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fail(fmt.Errorf("scoreboard %s: sync directory: %w", path, err))
	}
	s, err := open(fileStore{f}, path, geom, opts, f)
	if err != nil {
		return fail(err)
	}
	return s, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Open opens the metadata file at path and recovers its state: see
// Recovered.
func Open(path string, geom Geometry, opts Options) (*Scoreboard, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("scoreboard: %w", err)
	}
	if err := lock(f); err != nil {
		f.Close()
		return nil, err
	}
	s, err := open(fileStore{f}, path, geom, opts, f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// OpenStore is Open on a Store the caller owns (Close does not close it).
// name is used in errors.
func OpenStore(st Store, name string, geom Geometry, opts Options) (*Scoreboard, error) {
	return open(st, name, geom, opts, nil)
}

func open(st Store, name string, geom Geometry, opts Options, closer io.Closer) (*Scoreboard, error) {
	geom = geom.withDefaults()
	if err := geom.validate(); err != nil {
		return nil, fmt.Errorf("scoreboard %s: %w", name, err)
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	d, err := load(st, geom)
	if err != nil {
		return nil, fmt.Errorf("scoreboard %s: %w", name, err)
	}
	s := &Scoreboard{
		name: name, store: st, closer: closer, geom: geom, shift: geom.extentShift(),
		blocks: geom.blocks(), nonce: d.sb.nonce, layout: d.sb.layout,
		hotCap: opts.HotExtents, interval: opts.CleanInterval,
		wake: make(chan struct{}, 1), kick: make(chan struct{}, 1), stop: make(chan struct{}),
		hot: make(map[uint32]*extent, len(d.txn.extents)), persisted: make(chan struct{}),
		txnNum: d.txn.number, mapGen: d.mapGen, clean: d.txn.clean && len(d.txn.extents) == 0,
		txnBuf: make([]byte, pageSize),
	}
	// Recovery: whatever the hot extents hold may differ. It becomes out of
	// sync in memory at once, and the extents stay hot until a map that
	// holds their blocks is durable, so a second crash forgets nothing.
	s.recovered = d.oos
	for _, x := range d.txn.extents {
		first, end := s.blocksOf(x)
		s.recovered.AddRange(first, end)
	}
	s.oos = s.recovered.Clone()
	if len(d.txn.extents) > 0 {
		s.memGen = 1
	}
	for _, x := range d.txn.extents {
		s.hot[x] = &extent{num: x, durable: true, changed: s.memGen}
	}
	s.wg.Add(2)
	go s.commitLoop()
	go s.cleanLoop()
	if s.memGen > s.diskGen {
		signal(s.kick)
	}
	return s, nil
}

// loaded is what load found on disk.
type loaded struct {
	sb     superblock
	txn    txn
	oos    *roaring.Bitmap
	mapGen uint64
}

// load reads and checks the superblock, then takes the newest valid
// activity-log transaction and the newest valid map slot.
func load(st Store, geom Geometry) (loaded, error) {
	var d loaded
	page := make([]byte, pageSize)
	if _, err := st.ReadAt(page, 0); err != nil {
		return d, fmt.Errorf("read superblock: %w", err)
	}
	sb, err := decodeSuperblock(page)
	if err != nil {
		return d, err
	}
	d.sb = sb
	if sb.geom != geom {
		return d, fmt.Errorf("%w: file is for a volume of %d bytes, %d-byte blocks, %d-byte extents; asked for %d bytes, %d-byte blocks, %d-byte extents",
			ErrGeometry, sb.geom.VolumeSize, sb.geom.BlockSize, sb.geom.ExtentSize, geom.VolumeSize, geom.BlockSize, geom.ExtentSize)
	}
	l := sb.layout
	ring := make([]byte, int64(l.alSlots)*pageSize)
	if _, err := st.ReadAt(ring, l.alOff); err != nil {
		return d, fmt.Errorf("read activity log: %w", err)
	}
	found := false
	for i := range l.alSlots {
		t, ok, err := decodeTxn(ring[int64(i)*pageSize:], sb.nonce, geom.extents())
		if err != nil {
			return d, err
		}
		if ok && (!found || t.number > d.txn.number) {
			d.txn, found = t, true
		}
	}
	if !found {
		return d, fmt.Errorf("%w: no valid activity-log transaction in %d slots", ErrCorrupt, l.alSlots)
	}

	var hdrs [2]slotHeader
	var valid [2]bool
	for i, off := range l.slotOffs {
		if _, err := st.ReadAt(page, off); err != nil {
			return d, fmt.Errorf("read map slot %d: %w", i, err)
		}
		hdrs[i], valid[i] = decodeSlotHeader(page, sb.nonce, l.slotCap)
	}
	order := [2]int{0, 1}
	if hdrs[1].generation > hdrs[0].generation {
		order = [2]int{1, 0}
	}
	var problems []error
	for _, i := range order {
		if !valid[i] {
			problems = append(problems, fmt.Errorf("map slot %d: bad header", i))
			continue
		}
		bm, err := readMap(st, l.slotOffs[i], hdrs[i], geom.blocks())
		if err != nil {
			problems = append(problems, fmt.Errorf("map slot %d generation %d: %w", i, hdrs[i].generation, err))
			continue
		}
		d.oos, d.mapGen = bm, hdrs[i].generation
		return d, nil
	}
	return d, fmt.Errorf("%w: no valid out-of-sync map slot: %w", ErrCorrupt, errors.Join(problems...))
}

func readMap(st Store, off int64, h slotHeader, blocks uint64) (bm *roaring.Bitmap, err error) {
	payload := make([]byte, h.length)
	if _, err := st.ReadAt(payload, off+pageSize); err != nil {
		return nil, err
	}
	if got := checksum(payload); got != h.payloadCRC {
		return nil, fmt.Errorf("payload checksum %08x, header says %08x", got, h.payloadCRC)
	}
	// A payload that checksums but does not decode is corrupt metadata, not
	// a reason to crash the daemon.
	defer func() {
		if r := recover(); r != nil {
			bm, err = nil, fmt.Errorf("payload does not decode: %v", r)
		}
	}()
	bm = roaring.New()
	if err := bm.UnmarshalBinary(payload); err != nil {
		return nil, fmt.Errorf("payload does not decode: %w", err)
	}
	if !bm.IsEmpty() && uint64(bm.Maximum()) >= blocks {
		return nil, fmt.Errorf("payload names block %d of %d", bm.Maximum(), blocks)
	}
	return bm, nil
}

// encodeMap returns the slot image for bm: the header page, then the
// portable roaring serialization. It reuses buf's storage.
func encodeMap(buf []byte, bm *roaring.Bitmap, nonce, gen uint64, slotCap int64) ([]byte, error) {
	bm.RunOptimize()
	n := bm.GetSerializedSizeInBytes()
	if int64(n) > slotCap-pageSize {
		return nil, fmt.Errorf("out-of-sync map needs %d bytes, slot holds %d", n, slotCap-pageSize)
	}
	if need := pageSize + int(n); cap(buf) < need {
		buf = make([]byte, 0, need)
	}
	buf = append(buf[:0], make([]byte, pageSize)...)
	w := appendWriter{buf}
	if _, err := bm.WriteTo(&w); err != nil {
		return nil, err
	}
	buf = w.b
	h := slotHeader{nonce: nonce, generation: gen, length: uint64(len(buf) - pageSize), payloadCRC: checksum(buf[pageSize:])}
	h.encode(buf)
	return buf, nil
}

type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}
