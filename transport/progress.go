package transport

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Progress is a resync's progress as its source reports it to the target
// (KindProgress).
type Progress struct {
	DoneBlocks, TotalBlocks uint64
	RateBytes               uint64 // per second
	ETA                     time.Duration
}

// words is p as a Progress frame carries it: four big-endian words.
func (p Progress) words() []uint64 {
	return []uint64{p.DoneBlocks, p.TotalBlocks, p.RateBytes, uint64(p.ETA.Milliseconds())}
}

// decodeProgress is the Progress of a frame's payload.
func decodeProgress(p []byte) (Progress, error) {
	if len(p) != 32 {
		return Progress{}, fmt.Errorf("%w: progress frame of %d bytes", ErrMalformed, len(p))
	}
	u := func(i int) uint64 { return binary.BigEndian.Uint64(p[8*i:]) }
	return Progress{DoneBlocks: u(0), TotalBlocks: u(1), RateBytes: u(2), ETA: time.Duration(u(3)) * time.Millisecond}, nil
}
