package transport

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
)

// recordingHandler keeps a copy of every request and answers a flush with
// a fixed journal position.
type recordingHandler struct {
	mu   sync.Mutex
	reqs []Request
}

func (h *recordingHandler) Handle(r *Request) {
	c := *r
	c.Data = bytes.Clone(r.Data)
	c.sess, c.buf = nil, nil
	h.mu.Lock()
	h.reqs = append(h.reqs, c)
	h.mu.Unlock()
	if r.Kind == KindFlush {
		r.Reply(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, r.JournalID), 99), nil)
		return
	}
	r.Done(nil)
}

func TestJournalFrames(t *testing.T) {
	h := &recordingHandler{}
	ln, err := Listen("127.0.0.1:0", testConfig("b"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); _ = ln.Serve(ctx, h) }()
	defer func() { cancel(); <-served }()
	sess, err := Dial(context.Background(), ln.Addr().String(), testConfig("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()

	data := bytes.Repeat([]byte{7}, MaxWrite)
	ops := []JournalOp{
		{ID: 5, Seq: 100, Kind: KindWrite, Ordered: true, Offset: 0, Data: data},
		{ID: 5, Seq: 101, Kind: KindTrim, Offset: 4096, Length: 8192},
		{ID: 5, Seq: 102, Kind: KindFlush},
	}
	var replies [][]byte
	for _, op := range ops {
		c, err := sess.SubmitJournal(op)
		if err != nil {
			t.Fatal(err)
		}
		r, err := c.WaitReply()
		if err != nil {
			t.Fatal(err)
		}
		replies = append(replies, r)
	}
	if len(replies[0]) != 0 || len(replies[2]) != 16 || binary.BigEndian.Uint64(replies[2][8:]) != 99 {
		t.Fatalf("replies = %x", replies)
	}
	plain, err := sess.SubmitFlush()
	if err != nil {
		t.Fatal(err)
	}
	if r, err := plain.WaitReply(); err != nil || len(r) != 16 {
		t.Fatalf("plain flush reply = %x, %v; want the handler's 16 bytes", r, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.reqs) != 4 {
		t.Fatalf("%d requests handled", len(h.reqs))
	}
	for i, op := range ops {
		r := h.reqs[i]
		if r.Kind != op.Kind || r.JournalID != op.ID || r.JournalSeq != op.Seq || r.Ordered != op.Ordered || r.Offset != op.Offset || !bytes.Equal(r.Data, op.Data) {
			t.Errorf("request %d = %s id %d seq %d ordered %v at %d (%d bytes); want %+v", i, r.Kind, r.JournalID, r.JournalSeq, r.Ordered, r.Offset, len(r.Data), op)
		}
	}
	if r := h.reqs[1]; r.Length != 8192 {
		t.Errorf("trim length %d", r.Length)
	}
	if r := h.reqs[3]; r.JournalSeq != 0 || r.Kind != KindFlush {
		t.Errorf("plain flush arrived as %+v", r)
	}
	if st := sess.Stats(); st.Writes != 2 || st.Flushes != 2 || st.Bytes != MaxWrite {
		t.Errorf("stats = %+v, want 2 writes, 2 flushes, %d bytes", st, MaxWrite)
	}
	for _, bad := range []JournalOp{
		{ID: 5, Seq: 1, Kind: KindWrite},
		{ID: 5, Seq: 1, Kind: KindTrim},
		{ID: 5, Seq: 1, Kind: KindFlush, Offset: 1},
		{ID: 5, Seq: 1, Kind: KindChecksum},
	} {
		if _, err := sess.SubmitJournal(bad); err == nil {
			t.Errorf("SubmitJournal(%+v) accepted", bad)
		}
	}
}

func TestParseJournalRefuses(t *testing.T) {
	good := binary.BigEndian.AppendUint64(nil, 5)
	good = binary.BigEndian.AppendUint64(good, 9)
	good = append(good, byte(KindWrite), 0, 0, 0, 0, 0, 0, 0)
	good = binary.BigEndian.AppendUint64(good, 4096)
	good = append(good, 1, 2, 3)
	if _, err := parseJournal(Header{}, good, 1<<20); err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(p []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for name, p := range map[string][]byte{
		"short":        good[:20],
		"no id":        mutate(func(p []byte) []byte { clear(p[0:8]); return p }),
		"no seq":       mutate(func(p []byte) []byte { clear(p[8:16]); return p }),
		"flags":        mutate(func(p []byte) []byte { p[17] = 2; return p }),
		"reserved":     mutate(func(p []byte) []byte { p[20] = 1; return p }),
		"kind":         mutate(func(p []byte) []byte { p[16] = byte(KindGeneration); return p }),
		"outside":      mutate(func(p []byte) []byte { binary.BigEndian.PutUint64(p[24:], 1<<20-1); return p }),
		"no data":      good[:journalPrefix],
		"flush data":   mutate(func(p []byte) []byte { p[16] = byte(KindFlush); return p }),
		"trim no size": mutate(func(p []byte) []byte { p[16] = byte(KindTrim); return p[:journalPrefix] }),
	} {
		if _, err := parseJournal(Header{}, p, 1<<20); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: parseJournal = %v, want ErrMalformed", name, err)
		}
	}
}
