package volume

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/uuid"
)

func TestCreateAndLoadVolume(t *testing.T) {
	dir := t.TempDir()
	id := uuid.New()
	m, err := Create(dir, 1<<20, 4096, id, false)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.VolumeUUID != id || got.Size != 1<<20 || got.BlockSize != 4096 || !got.Created.Equal(m.Created) {
		t.Fatalf("loaded %+v, created %+v", got, m)
	}
	st, err := os.Stat(filepath.Join(dir, BackingFile))
	if err != nil || st.Size() != 1<<20 {
		t.Fatalf("backing file: %v, %v", st, err)
	}
	if _, err := Create(dir, 1<<20, 4096, id, false); err == nil || !strings.Contains(err.Error(), "already holds a volume") {
		t.Fatalf("second create in the same dir: %v", err)
	}
}

func TestCreateVolumeRejects(t *testing.T) {
	for _, tc := range []struct {
		name      string
		size      int64
		blockSize int
		want      string
	}{
		{"size not a multiple of the block size", 1<<20 + 1, 4096, "not a positive multiple"},
		{"zero size", 0, 4096, "not a positive multiple"},
		{"bad block size", 1 << 20, 1000, "power of two"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Create(t.TempDir(), tc.size, tc.blockSize, uuid.Nil, false)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}
