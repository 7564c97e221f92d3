package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
)

// client is a minimal synchronous LDAP client: one request at a time on one
// connection, requests encoded with asn1-ber, responses framed and read
// without building packets. It is deliberately lean, like the C libldap of
// nslcd or SSSD, so that its own CPU does not hide the proxy's.
type client struct {
	nc  net.Conn
	r   *bufio.Reader
	id  int64
	buf []byte
}

func dial(addr string) (*client, error) {
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &client{nc: nc, r: bufio.NewReaderSize(nc, 64<<10)}, nil
}

func (c *client) close() { _ = c.nc.Close() }

// roundTrip sends op and reads responses up to the final one; it returns
// the result code and the number of search entries.
func (c *client) roundTrip(op *ber.Packet) (code int, entries int, err error) {
	c.id++
	msg := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	msg.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, c.id, ""))
	msg.AppendChild(op)
	if _, err := c.nc.Write(msg.Bytes()); err != nil {
		return 0, 0, err
	}
	for {
		tag, body, err := c.read()
		if err != nil {
			return 0, entries, err
		}
		switch tag {
		case 0x64: // SearchResultEntry
			entries++
		case 0x73: // SearchResultReference
		default:
			return resultCode(body), entries, nil
		}
	}
}

// read reads one LDAPMessage and returns its operation's tag byte and the
// operation's content.
func (c *client) read() (byte, []byte, error) {
	n, err := c.header(0x30)
	if err != nil {
		return 0, nil, err
	}
	if cap(c.buf) < n {
		c.buf = make([]byte, n)
	}
	b := c.buf[:n]
	if _, err := io.ReadFull(c.r, b); err != nil {
		return 0, nil, err
	}
	// messageID INTEGER, then the operation.
	_, rest, err := element(b)
	if err != nil {
		return 0, nil, err
	}
	if len(rest) == 0 {
		return 0, nil, errors.New("no operation")
	}
	tag := rest[0]
	content, _, err := element(rest)
	return tag, content, err
}

func (c *client) header(want byte) (int, error) {
	tag, err := c.r.ReadByte()
	if err != nil {
		return 0, err
	}
	if tag != want {
		return 0, fmt.Errorf("tag 0x%02x, want 0x%02x", tag, want)
	}
	l, err := c.r.ReadByte()
	if err != nil {
		return 0, err
	}
	if l < 0x80 {
		return int(l), nil
	}
	n := 0
	for range l & 0x7f {
		b, err := c.r.ReadByte()
		if err != nil {
			return 0, err
		}
		n = n<<8 | int(b)
	}
	return n, nil
}

// element splits b into the content of its first TLV and what follows.
func element(b []byte) (content, rest []byte, err error) {
	if len(b) < 2 {
		return nil, nil, errors.New("short element")
	}
	l, i := int(b[1]), 2
	if l >= 0x80 {
		n := l & 0x7f
		if len(b) < 2+n {
			return nil, nil, errors.New("short length")
		}
		l = 0
		for _, x := range b[2 : 2+n] {
			l = l<<8 | int(x)
		}
		i += n
	}
	if len(b) < i+l {
		return nil, nil, errors.New("short content")
	}
	return b[i : i+l], b[i+l:], nil
}

// resultCode is the resultCode ENUMERATED at the start of an LDAPResult.
func resultCode(op []byte) int {
	v, _, err := element(op)
	if err != nil || len(v) == 0 {
		return -1
	}
	return int(v[0])
}

func str(tag ber.Tag, class ber.Class, s string) *ber.Packet {
	return ber.NewString(class, ber.TypePrimitive, tag, s, "")
}

func bindOp(dn, pw string) *ber.Packet {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, 0, nil, "")
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(3), ""))
	op.AppendChild(str(ber.TagOctetString, ber.ClassUniversal, dn))
	op.AppendChild(str(0, ber.ClassContext, pw))
	return op
}

// searchUID is a subtree search under base for (uid=<uid>) returning
// cn, mail and telephoneNumber.
func searchUID(base, uid string) *ber.Packet {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, 3, nil, "")
	op.AppendChild(str(ber.TagOctetString, ber.ClassUniversal, base))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(2), ""))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(0), ""))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(0), ""))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(0), ""))
	op.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, false, ""))
	eq := ber.Encode(ber.ClassContext, ber.TypeConstructed, 3, nil, "")
	eq.AppendChild(str(ber.TagOctetString, ber.ClassUniversal, "uid"))
	eq.AppendChild(str(ber.TagOctetString, ber.ClassUniversal, uid))
	op.AppendChild(eq)
	attrs := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	for _, a := range []string{"cn", "mail", "telephoneNumber"} {
		attrs.AppendChild(str(ber.TagOctetString, ber.ClassUniversal, a))
	}
	op.AppendChild(attrs)
	return op
}

func attribute(name string, vals ...string) *ber.Packet {
	a := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	a.AppendChild(str(ber.TagOctetString, ber.ClassUniversal, name))
	set := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSet, nil, "")
	for _, v := range vals {
		set.AppendChild(str(ber.TagOctetString, ber.ClassUniversal, v))
	}
	a.AppendChild(set)
	return a
}

// modifyOp replaces the description of dn.
func modifyOp(dn, description string) *ber.Packet {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, 6, nil, "")
	op.AppendChild(str(ber.TagOctetString, ber.ClassUniversal, dn))
	changes := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	ch := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	ch.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(2), ""))
	ch.AppendChild(attribute("description", description))
	changes.AppendChild(ch)
	op.AppendChild(changes)
	return op
}

// addOp adds an inetOrgPerson uid=<uid> under base.
func addOp(base, uid string) *ber.Packet {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, 8, nil, "")
	op.AppendChild(str(ber.TagOctetString, ber.ClassUniversal, "uid="+uid+","+base))
	attrs := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	attrs.AppendChild(attribute("objectClass", "inetOrgPerson"))
	attrs.AppendChild(attribute("uid", uid))
	attrs.AppendChild(attribute("cn", "Bench "+uid))
	attrs.AppendChild(attribute("sn", uid))
	attrs.AppendChild(attribute("mail", uid+"@example.com"))
	op.AppendChild(attrs)
	return op
}

// workload is one kind of load.
type workload struct {
	name    string
	label   string
	workers int
	// op returns the request of worker w's i-th operation and the result
	// code it must get.
	op func(run string, w, i int, rng *rand.Rand) *ber.Packet
}

// measurement is one run of a workload against one target.
type measurement struct {
	ops      int
	elapsed  time.Duration
	p50, p99 time.Duration
}

func (m measurement) rate() float64 { return float64(m.ops) / m.elapsed.Seconds() }

// runLoad runs w against addr for d with w.workers connections bound as
// the root DN; run makes the DNs of adds unique across runs. Every
// operation must succeed.
func runLoad(addr string, w workload, run string, d time.Duration) (measurement, error) {
	clients := make([]*client, w.workers)
	for i := range clients {
		c, err := dial(addr)
		if err != nil {
			return measurement{}, err
		}
		defer c.close()
		if code, _, err := c.roundTrip(bindOp(rootDN, rootPW)); err != nil || code != 0 {
			return measurement{}, fmt.Errorf("bind: code %d, %v", code, err)
		}
		clients[i] = c
	}
	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		mu      sync.Mutex
		lats    []time.Duration
		firstEr error
	)
	start := time.Now()
	for k, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(k), uint64(start.UnixNano())))
			mine := make([]time.Duration, 0, 1<<16)
			var err error
			for i := 0; !stop.Load(); i++ {
				op := w.op(run, k, i, rng)
				t := time.Now()
				var code, n int
				code, n, err = c.roundTrip(op)
				if err == nil && (code != 0 || (strings.HasPrefix(w.name, "search") && n != 1)) {
					err = fmt.Errorf("%s: result %d, %d entries", w.name, code, n)
				}
				if err != nil {
					break
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			lats = append(lats, mine...)
			if err != nil && firstEr == nil {
				firstEr = err
			}
			mu.Unlock()
		}()
	}
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	defer timer.Stop()
	wg.Wait()
	elapsed := time.Since(start)
	if firstEr != nil {
		return measurement{}, firstEr
	}
	slices.Sort(lats)
	m := measurement{ops: len(lats), elapsed: elapsed}
	if len(lats) > 0 {
		m.p50, m.p99 = lats[len(lats)/2], lats[len(lats)*99/100]
	}
	return m, nil
}
