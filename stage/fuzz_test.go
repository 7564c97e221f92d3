package stage

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/blockdev"
)

// FuzzDecode feeds arbitrary bytes to the log's decoder, as Open reads a
// log a crash or a damaged disk left: it must refuse or read it, never
// panic or index past the volume. The seed corpus (testdata/fuzz/FuzzDecode)
// holds a staged and a committed log, a torn one and headers alone.
func FuzzDecode(f *testing.F) {
	f.Add(sampleLog(f, false))
	f.Add(sampleLog(f, true))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		h, ok, err := readHeader(r)
		g := Geometry{Size: testSize, BlockSize: testBS}
		if err != nil || !ok || h.Size != g.Size || h.BlockSize != uint32(g.BlockSize) {
			return
		}
		index := map[uint32]int64{}
		end, err := scanRecords(r, int64(len(b)), h.Began, g, index)
		if err != nil || end > int64(max(len(b), recordStart)) {
			t.Fatalf("scan ended at %d of %d bytes: %v", end, len(b), err)
		}
		for k, s := range index {
			if uint64(k) >= g.blocks() || s != zeroBlock && (s < recordStart+recordHeader || s+testBS > int64(len(b))) {
				t.Fatalf("block %d indexed at %d in a log of %d bytes", k, s, len(b))
			}
		}
	})
}

// sampleLog returns the bytes of a small log, staged or committed.
func sampleLog(tb testing.TB, committed bool) []byte {
	tb.Helper()
	dir := tb.TempDir()
	path := filepath.Join(dir, "volume.img")
	if err := blockdev.CreateFile(path, testSize, true); err != nil {
		tb.Fatal(err)
	}
	base, err := blockdev.OpenFile(path, testSize)
	if err != nil {
		tb.Fatal(err)
	}
	defer base.Close()
	logPath := filepath.Join(dir, "resync.stage")
	a, err := Open(logPath, base, Geometry{Size: testSize, BlockSize: testBS}, quiet)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := a.Begin(8*testBS, Begin{AsOf: time.Unix(1700000000, 0), Source: "a"}); err != nil {
		tb.Fatal(err)
	}
	if _, err := a.WriteAt(make([]byte, 2*testBS), 3*testBS); err != nil {
		tb.Fatal(err)
	}
	if err := a.Trim(10*testBS, 4*testBS); err != nil {
		tb.Fatal(err)
	}
	if committed {
		a.mu.Lock()
		a.state = Committing
		a.mu.Unlock()
		a.commit()
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	a.mu.Lock()
	a.cancel = nil
	a.mu.Unlock()
	a.Close()
	return b
}
