package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// TestMirroredExt4 is issue 2's end-to-end test: two daemons on 127.0.0.1
// with 256 MiB volumes; the primary's volume through FUSE and a loop device,
// ext4, 2,000 files of mixed sizes and an fio verify run; after umount the
// backing files are identical and status is clean.
func TestMirroredExt4(t *testing.T) {
	requireE2E(t, "mkfs.ext4", "fio", "mount")
	a, b, creds := pairDirs(t, "256MiB")
	pri, sec := mirroredPair(t, a, b, creds)
	dev, mnt := mountVolume(t, a)

	rng := rand.New(rand.NewPCG(1, 2))
	sizes := []int{0, 100, 4096, 5000, 65536, 300 << 10}
	var total int
	for i := range 2000 {
		sub := filepath.Join(mnt, fmt.Sprintf("d%02d", i%50))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		data := make([]byte, sizes[rng.IntN(len(sizes))]+rng.IntN(4096))
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		total += len(data)
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%04d", i)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("wrote 2000 files, %d bytes", total)
	out := run(t, "fio", "--name=verify", "--filename="+filepath.Join(mnt, "fio.dat"), "--size=64M",
		"--rw=randwrite", "--bs=4k", "--ioengine=libaio", "--iodepth=16", "--direct=1",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0")
	t.Logf("fio: %s", lastLines(out, 3))
	run(t, "sync")
	run(t, "umount", mnt)
	ldmirror(t, "detach", dev)

	st := statusJSON(t, a)
	if st.Link != "connected" || st.DirtyBlocks != 0 {
		t.Fatalf("primary status: link %s, %d dirty blocks; want connected and 0", st.Link, st.DirtyBlocks)
	}
	if st.WritesShipped == 0 || st.FlushesShipped == 0 {
		t.Fatalf("nothing was shipped: %+v", st)
	}
	sum := fileSHA256(t, filepath.Join(a, "volume.img"))
	if other := fileSHA256(t, filepath.Join(b, "volume.img")); other != sum {
		t.Fatalf("backing files differ after umount: %s vs %s", sum, other)
	}
	pri.stop(t)
	sec.stop(t)
	if other := fileSHA256(t, filepath.Join(b, "volume.img")); other != fileSHA256(t, filepath.Join(a, "volume.img")) {
		t.Fatal("backing files differ after both daemons stopped")
	}
	t.Logf("identical backing files, sha256 %s; %d writes, %d bytes, %d flushes shipped", sum, st.WritesShipped, st.BytesShipped, st.FlushesShipped)
}

func lastLines(s string, n int) string {
	lines := []rune(s)
	count := 0
	for i := len(lines) - 1; i >= 0; i-- {
		if lines[i] == '\n' {
			count++
			if count > n {
				return string(lines[i+1:])
			}
		}
	}
	return s
}
