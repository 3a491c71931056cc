package capture

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/deeptrace/deeptrace/agent/event"
)

// Record types and layouts of bpf/capture.h. record_test.go checks them
// against the bpf2go-generated structs.
const (
	recData = 1
	recGo   = 2
	recExec = 3

	dataHdrSize = 144
	goRecSize   = 40
	execRecSize = 8

	afInet  = 2
	afInet6 = 10
)

// Byte offsets in struct data_event.
const (
	offKind    = 1
	offDir     = 2
	offRole    = 3
	offFamily  = 4
	offFlags   = 5
	offLport   = 6
	offRport   = 8
	offPid     = 12
	offTid     = 16
	offFd      = 20
	offNetns   = 24
	offSeq     = 28
	offEnterNs = 32
	offExitNs  = 40
	offSockID  = 48
	offCgroup  = 56
	offGoid    = 64
	offSize    = 72
	offOffset  = 80
	offLen     = 84
	offLaddr   = 88
	offRaddr   = 104
	offComm    = 120
	offParent  = 136
)

// Flags of a data event (bpf/capture.h enum event_flags).
const (
	flagTruncated = 1
	flagFault     = 2
	flagNoEnter   = 4
	flagSeqGuess  = 8
)

var errShort = errors.New("capture: short record")

// decoder turns raw ring buffer records into events. Process names are
// interned: a process makes many calls under one name. Payloads point into
// the record they were decoded from; own copies those that must outlive it
// into shared slabs: one allocation per slab instead of one per event (a
// slab lives as long as any payload in it).
type decoder struct {
	comms map[[16]byte]string
	slab  []byte
}

const slabSize = 256 << 10

func newDecoder() *decoder {
	return &decoder{comms: make(map[[16]byte]string)}
}

// own returns a copy of p in the slab (p itself when empty). The copy's
// capacity ends with it: an append by the consumer cannot run into the next
// payload.
func (d *decoder) own(p []byte) []byte {
	n := len(p)
	if n == 0 {
		return p
	}
	if n > slabSize/4 {
		return append([]byte(nil), p...)
	}
	if len(d.slab) < n {
		d.slab = make([]byte, slabSize)
	}
	c := d.slab[:n:n]
	copy(c, p)
	d.slab = d.slab[min((n+7)&^7, len(d.slab)):]
	return c
}

var le = binary.LittleEndian

// data decodes a REC_DATA record into e. The payload points into b: the
// caller keeps b (see keep) when it hands the payload on.
func (d *decoder) data(b []byte, e *event.Event) error {
	if len(b) < dataHdrSize {
		return errShort
	}
	n := int(le.Uint32(b[offLen:]))
	if len(b) < dataHdrSize+n {
		return errShort
	}
	e.Kind = event.Kind(b[offKind])
	e.Dir = event.Direction(b[offDir])
	e.Role = event.Role(b[offRole])
	e.EnterNs = le.Uint64(b[offEnterNs:])
	e.ExitNs = le.Uint64(b[offExitNs:])
	e.PID = le.Uint32(b[offPid:])
	e.TID = le.Uint32(b[offTid:])
	e.FD = int32(le.Uint32(b[offFd:]))
	e.SockID = le.Uint64(b[offSockID:])
	e.NetNS = le.Uint32(b[offNetns:])
	e.Cgroup = le.Uint64(b[offCgroup:])
	e.Size = int64(le.Uint64(b[offSize:]))
	e.Offset = int64(le.Uint32(b[offOffset:]))
	e.TCPSeq = le.Uint32(b[offSeq:])
	e.GoID = le.Uint64(b[offGoid:])
	e.ParentGoID = le.Uint64(b[offParent:])
	lport, rport := le.Uint16(b[offLport:]), le.Uint16(b[offRport:])
	var la, ra netip.Addr
	if b[offFamily] == afInet {
		la = netip.AddrFrom4([4]byte(b[offLaddr : offLaddr+4]))
		ra = netip.AddrFrom4([4]byte(b[offRaddr : offRaddr+4]))
	} else {
		// Dual-stack sockets hold IPv4 peers as ::ffff:a.b.c.d; unmap so
		// both ends of a connection spell the address alike.
		la = netip.AddrFrom16([16]byte(b[offLaddr : offLaddr+16])).Unmap()
		ra = netip.AddrFrom16([16]byte(b[offRaddr : offRaddr+16])).Unmap()
	}
	e.Local = netip.AddrPortFrom(la, lport)
	e.Remote = netip.AddrPortFrom(ra, rport)
	e.Comm = d.comm([16]byte(b[offComm : offComm+16]))
	if n > 0 {
		// Full slice expression: an append by the consumer cannot run
		// into the next record.
		e.Payload = b[dataHdrSize : dataHdrSize+n : dataHdrSize+n]
	} else {
		e.Payload = nil
	}
	return nil
}

func (d *decoder) comm(raw [16]byte) string {
	if s, ok := d.comms[raw]; ok {
		return s
	}
	n := 0
	for n < len(raw) && raw[n] != 0 {
		n++
	}
	s := string(raw[:n])
	if len(d.comms) > 4096 {
		clear(d.comms) // bound: many short-lived processes
	}
	d.comms[raw] = s
	return s
}

// goEvent decodes a REC_GO record.
func (d *decoder) goEvent(b []byte, g *event.GoEvent) error {
	if len(b) < goRecSize {
		return errShort
	}
	g.Kind = event.GoEventKind(b[1])
	g.PID = le.Uint32(b[4:])
	g.TID = le.Uint32(b[8:])
	g.Ns = le.Uint64(b[16:])
	g.GoID = le.Uint64(b[24:])
	g.ParentGoID = le.Uint64(b[32:])
	return nil
}
