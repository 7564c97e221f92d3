package scoreboard

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/bitmap"
)

func TestCreateOpenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "scoreboard")
	s, err := Create(path, testGeom, quiet)
	if err != nil {
		t.Fatal(err)
	}
	e := bitmap.Extent{First: 100, Last: 101}
	write(t, s, e, false)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(path, testGeom, quiet); !errors.Is(err, os.ErrExist) {
		t.Fatalf("Create over an existing file: %v, want ErrExist", err)
	}
	other := testGeom
	other.VolumeSize *= 2
	if _, err := Open(path, other, quiet); !errors.Is(err, ErrGeometry) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Open with another volume size: %v, want ErrGeometry naming %s", err, path)
	}
	s, err = Open(path, testGeom, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(path, testGeom, quiet); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Open of an open file: %v, want ErrInUse", err)
	}
	if got := s.Recovered(); !got.Equals(roaring.BitmapOf(100, 101)) || !s.WasClean() {
		t.Fatalf("reopened: recovered %v clean %v, want {100,101} clean", got, s.WasClean())
	}
}

// TestTornActivityLog tears the newest activity-log transaction at every
// class of byte boundary, after the ring has wrapped: the previous
// transaction must load, and nothing it held may be forgotten.
func TestTornActivityLog(t *testing.T) {
	opts := Options{CleanInterval: -1, ALSlots: 3}
	for _, keep := range []int{0, 1, 511, 512, 2048, 4092, 4095, pageSize} {
		t.Run(fmt.Sprint(keep), func(t *testing.T) {
			st := formatted(t, opts)
			s := openT(t, st, opts)
			for x := uint32(10); x < 18; x++ { // 8 transactions: the 3-slot ring wraps
				write(t, s, extentBlocks(x), true)
			}
			before := st.opCount()
			write(t, s, extentBlocks(3), true)
			if st.opCount() != before+2 {
				t.Fatalf("new extent cost %d store ops, want 2 (write, sync)", st.opCount()-before)
			}
			img := st.crashAt(before+1, func(_ int, w storeOp) []byte { return w.data[:keep] })
			r := openT(t, img, opts)
			want := []uint32{10, 11, 12, 13, 14, 15, 16, 17}
			if keep == pageSize {
				want = []uint32{3, 10, 11, 12, 13, 14, 15, 16, 17}
			}
			if got := hotExtents(r); !slices.Equal(got, want) {
				t.Fatalf("hot after tear at %d bytes = %v, want %v", keep, got, want)
			}
			mustContain(t, "recovered", r.Recovered(), blocksOfExtents(want...))
		})
	}
}

// TestTornMapSlot tears a write of either out-of-sync map slot at every
// class of boundary (header, end of the header page, payload start, middle,
// end): the other slot's generation must load.
func TestTornMapSlot(t *testing.T) {
	a, b, c := roaring.BitmapOf(1, 2, 3, 500), roaring.BitmapOf(7000, 7001), roaring.New()
	for i := uint32(0); i < 400; i++ {
		c.Add(8000 + 3*i) // a payload of a few hundred bytes
	}
	type tear struct {
		name string
		keep func(n int) int
	}
	tears := []tear{
		{"nothing", func(int) int { return 0 }},
		{"header-start", func(int) int { return 1 }},
		{"header-mid", func(int) int { return 30 }},
		{"header-end", func(int) int { return slotHeaderSize - 1 }},
		{"header-page", func(int) int { return pageSize }},
		{"payload-start", func(int) int { return pageSize + 1 }},
		{"payload-mid", func(n int) int { return pageSize + (n-pageSize)/2 }},
		{"payload-end", func(n int) int { return n - 1 }},
	}
	// Generation 2 goes to slot 0, 3 to slot 1, 4 to slot 0 again.
	for _, slot := range []int{0, 1} {
		for _, tr := range tears {
			t.Run(fmt.Sprintf("slot%d/%s", slot, tr.name), func(t *testing.T) {
				st := formatted(t, quiet)
				s := openT(t, st, quiet)
				sync := func(bm *roaring.Bitmap) int {
					s.MarkOutOfSync(bm)
					before := st.opCount()
					if err := s.Sync(context.Background()); err != nil {
						t.Fatal(err)
					}
					return before
				}
				sync(a)
				torn, want := sync(b), a
				if slot == 0 {
					torn, want = sync(c), roaring.Or(a, b)
				}
				slotOff := st.layoutFor(t).slotOffs[slot]
				img := st.crashAt(torn+1, func(_ int, w storeOp) []byte {
					if w.off != slotOff {
						t.Fatalf("torn write at %d is not slot %d", w.off, slot)
					}
					return w.data[:tr.keep(len(w.data))]
				})
				r := openT(t, img, quiet)
				if got := r.Recovered(); !got.Equals(want) {
					t.Fatalf("recovered %v, want the previous generation %v", got, want)
				}
			})
		}
	}
}

func TestLoadErrors(t *testing.T) {
	le := binary.LittleEndian
	resum := func(p []byte) { le.PutUint32(p[pageSize-4:], checksum(p[:pageSize-4])) }
	cases := []struct {
		name   string
		geom   Geometry
		damage func(st *crashStore, l layout)
		is     error
		says   string
	}{
		{"unformatted", testGeom, func(st *crashStore, _ layout) { clear(st.data) }, ErrCorrupt, "no superblock magic"},
		{"superblock bit flip", testGeom, func(st *crashStore, _ layout) { st.data[20] ^= 1 }, ErrCorrupt, "superblock checksum"},
		{"newer version", testGeom, func(st *crashStore, _ layout) { le.PutUint32(st.data[8:], 2); resum(st.data) }, ErrVersion, "format 2"},
		{"wrong block size", Geometry{VolumeSize: 64 << 20, BlockSize: 8192, ExtentSize: 256 << 10}, nil, ErrGeometry, "4096-byte blocks"},
		{"wrong extent size", Geometry{VolumeSize: 64 << 20, BlockSize: 4096}, nil, ErrGeometry, "262144-byte extents"},
		{"activity log wiped", testGeom, func(st *crashStore, l layout) {
			clear(st.data[l.alOff : l.alOff+int64(l.alSlots)*pageSize])
		}, ErrCorrupt, "no valid activity-log transaction"},
		{"both map slots bad", testGeom, func(st *crashStore, l layout) {
			st.data[l.slotOffs[0]+pageSize] ^= 0xff
			st.data[l.slotOffs[1]+pageSize] ^= 0xff
		}, ErrCorrupt, "no valid out-of-sync map slot"},
		{"transaction names an extent past the end", testGeom, func(st *crashStore, l layout) {
			p := st.data[l.alOff+pageSize : l.alOff+2*pageSize]
			le.PutUint32(p[16:], 1)
			le.PutUint32(p[txnHeaderSize:], 256)
			resum(p)
		}, ErrCorrupt, "lists extent 256 of 256"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := formatted(t, quiet)
			s := openT(t, st, quiet)
			s.MarkOutOfSync(roaring.BitmapOf(5)) // both slots hold a map
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if c.damage != nil {
				c.damage(st, st.layoutFor(t))
			}
			_, err := OpenStore(st, "/var/lib/ldmirror/vol0.scoreboard", c.geom, quiet)
			if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.says) || !strings.Contains(err.Error(), "vol0.scoreboard") {
				t.Fatalf("err = %v, want %v saying %q and naming the file", err, c.is, c.says)
			}
		})
	}
}

func TestBadGeometryAndOptions(t *testing.T) {
	for _, g := range []Geometry{
		{VolumeSize: 0},
		{VolumeSize: 1 << 20, BlockSize: 1000},
		{VolumeSize: 1 << 20, BlockSize: 4096, ExtentSize: 2048},
		{VolumeSize: 1 << 50, BlockSize: 4096},
	} {
		if err := Format(newCrashStore(1<<20), "g", g, Options{}); !errors.Is(err, ErrGeometry) {
			t.Errorf("Format(%+v) = %v, want ErrGeometry", g, err)
		}
	}
	for _, o := range []Options{{HotExtents: 1}, {HotExtents: MaxHotExtents + 1}, {ALSlots: 1}} {
		if err := Format(newCrashStore(1<<20), "o", testGeom, o); err == nil {
			t.Errorf("Format with %+v succeeded", o)
		}
	}
}
