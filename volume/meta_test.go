package volume

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/ldmirror/ldmirror/blockdev"
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

// TestDamagedMetadata: a changed byte of meta.json is found and named
// with the recovery, not acted on; a meta.json from before the checksum
// still loads; a leftover backing file is not overwritten by init, and
// Repair rebuilds the metadata as a discarded copy of the peer's volume.
func TestDamagedMetadata(t *testing.T) {
	dir := t.TempDir()
	id := uuid.New()
	m, err := Create(dir, 1<<20, 4096, id, false)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, MetaFile)
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cur := fmt.Sprintf(`"current": %d`, m.Generations.Current)
	if !strings.Contains(string(good), cur) {
		t.Fatalf("meta.json lacks %s:\n%s", cur, good)
	}
	damaged := strings.Replace(string(good), cur, fmt.Sprintf(`"current": %d`, m.Generations.Current+1), 1)
	if err := os.WriteFile(path, []byte(damaged), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Load(dir)
	if !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "--repair-metadata") {
		t.Fatalf("Load of a changed meta.json = %v; want ErrDamaged naming the file and the repair", err)
	}
	old := regexp.MustCompile(`,?\s*"checksum": "[0-9a-f]+"`).ReplaceAllString(string(good), "")
	if err := os.WriteFile(path, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err != nil {
		t.Fatalf("Load of a meta.json without a checksum: %v", err)
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(dir, 1<<20, 4096, id, false); err == nil || !strings.Contains(err.Error(), "--repair-metadata") {
		t.Fatalf("Create over a leftover backing file = %v; want a refusal naming --repair-metadata", err)
	}
	if _, err := Repair(dir, 1<<20, 4096, id); err != nil {
		t.Fatal(err)
	}
	loaded, err := Load(dir)
	if err != nil || loaded.VolumeUUID != id || !loaded.Generations.Discarded() {
		t.Fatalf("after Repair: %+v, %v; want the peer's UUID, a discarded generation", loaded, err)
	}
	if _, err := Repair(dir, 2<<20, 4096, id); !errors.Is(err, blockdev.ErrWrongSize) {
		t.Fatalf("Repair with the wrong size = %v, want ErrWrongSize", err)
	}
}
