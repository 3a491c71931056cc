// Package capfile records what capture produced (data events, goroutine
// events, clock calibrations) to a file and plays it back, so one capture of
// a workload can be run through connection tracking and correlation many
// times: once per correlation method, offline, deterministically.
//
// The file is gzip-compressed; after a header line with JSON metadata come
// records of one type byte and varint-encoded fields, in the order the
// recorder received them.
package capfile

import (
	"bufio"
	"compress/gzip"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"

	"github.com/deeptrace/deeptrace/agent/event"
)

const magic = "deeptrace-capture-v2"

// Record types.
const (
	recData  = 1
	recGo    = 2
	recClock = 3
)

// Meta describes a capture: which processes were traced, as what service.
type Meta struct {
	// Services maps a traced pid to its service name.
	Services map[uint32]string `json:"services"`
	// Host names the host in the spans made from the capture.
	Host string `json:"host"`
	// Note is free text (the command that made the capture, the load).
	Note string `json:"note,omitempty"`
	// MaxCallBytes is the capture's per-call payload limit.
	MaxCallBytes int `json:"max_call_bytes"`
	// GoCreation says every goroutine creation was recorded (uprobes on
	// runtime.newproc1), GoScheduling every switch (event.GoRunning).
	GoCreation   bool `json:"go_creation,omitempty"`
	GoScheduling bool `json:"go_scheduling,omitempty"`
}

// Writer appends records to a capture file. It is not safe for concurrent
// use.
type Writer struct {
	f   *os.File
	zw  *gzip.Writer
	bw  *bufio.Writer
	buf []byte
	n   int
}

// Create makes a capture file at path and writes its header.
func Create(path string, m Meta) (*Writer, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("capfile: %w", err)
	}
	zw, _ := gzip.NewWriterLevel(f, gzip.BestSpeed)
	w := &Writer{f: f, zw: zw, bw: bufio.NewWriterSize(zw, 1<<20)}
	hdr, err := json.Marshal(m)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("capfile: %w", err)
	}
	fmt.Fprintf(w.bw, "%s %s\n", magic, hdr)
	return w, nil
}

// Records is how many records were written.
func (w *Writer) Records() int { return w.n }

func (w *Writer) flushRec() error {
	var l [binary.MaxVarintLen64]byte
	n := binary.PutUvarint(l[:], uint64(len(w.buf)))
	if _, err := w.bw.Write(l[:n]); err != nil {
		return err
	}
	_, err := w.bw.Write(w.buf)
	w.n++
	return err
}

func addrBytes(b []byte, a netip.AddrPort) []byte {
	raw := a.Addr().AsSlice()
	b = append(b, byte(len(raw)))
	b = append(b, raw...)
	return binary.AppendUvarint(b, uint64(a.Port()))
}

// Data records a data (or connect, accept, close) event.
func (w *Writer) Data(e *event.Event) error {
	b := append(w.buf[:0], recData, byte(e.Kind), byte(e.Dir), byte(e.Role))
	for _, v := range []uint64{e.EnterNs, e.ExitNs, uint64(e.PID), uint64(e.TID), uint64(uint32(e.FD)), e.SockID,
		uint64(e.NetNS), e.Cgroup, uint64(e.Size), uint64(e.Offset), uint64(e.TCPSeq), e.GoID, e.ParentGoID} {
		b = binary.AppendUvarint(b, v)
	}
	b = addrBytes(b, e.Local)
	b = addrBytes(b, e.Remote)
	b = binary.AppendUvarint(b, uint64(len(e.Comm)))
	b = append(b, e.Comm...)
	b = binary.AppendUvarint(b, uint64(len(e.Payload)))
	b = append(b, e.Payload...)
	w.buf = b
	return w.flushRec()
}

// Go records a goroutine event.
func (w *Writer) Go(g *event.GoEvent) error {
	b := append(w.buf[:0], recGo, byte(g.Kind))
	for _, v := range []uint64{g.Ns, uint64(g.PID), uint64(g.TID), g.GoID, g.ParentGoID} {
		b = binary.AppendUvarint(b, v)
	}
	w.buf = b
	return w.flushRec()
}

// Clock records the offset wall - monotonic (ns) valid from monotonic time
// mono on.
func (w *Writer) Clock(mono uint64, offset int64) error {
	b := append(w.buf[:0], recClock)
	b = binary.AppendUvarint(b, mono)
	b = binary.AppendVarint(b, offset)
	w.buf = b
	return w.flushRec()
}

// Close flushes and closes the file.
func (w *Writer) Close() error {
	err := w.bw.Flush()
	if e := w.zw.Close(); err == nil {
		err = e
	}
	if e := w.f.Close(); err == nil {
		err = e
	}
	return err
}

// Handler receives what a capture file holds, in file order.
type Handler struct {
	Meta  func(m Meta)
	Data  func(e *event.Event)
	Go    func(g *event.GoEvent)
	Clock func(mono uint64, offset int64)
}

// ReadMeta returns a capture file's metadata without reading its records.
func ReadMeta(path string) (Meta, error) {
	var m Meta
	f, err := os.Open(path)
	if err != nil {
		return m, fmt.Errorf("capfile: %w", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return m, fmt.Errorf("capfile %s: %w", path, err)
	}
	return readHeader(bufio.NewReader(zr), path)
}

func readHeader(br *bufio.Reader, path string) (Meta, error) {
	var m Meta
	line, err := br.ReadString('\n')
	if err != nil || len(line) < len(magic)+1 || line[:len(magic)] != magic {
		return m, fmt.Errorf("capfile %s: not a capture file (or an older version)", path)
	}
	if err := json.Unmarshal([]byte(line[len(magic)+1:]), &m); err != nil {
		return m, fmt.Errorf("capfile %s: header: %w", path, err)
	}
	return m, nil
}

// Read opens the capture file at path, returns its metadata, and calls h's
// functions for each record.
func Read(path string, h Handler) (Meta, error) {
	var m Meta
	f, err := os.Open(path)
	if err != nil {
		return m, fmt.Errorf("capfile: %w", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return m, fmt.Errorf("capfile %s: %w", path, err)
	}
	br := bufio.NewReaderSize(zr, 1<<20)
	if m, err = readHeader(br, path); err != nil {
		return m, err
	}
	if h.Meta != nil {
		h.Meta(m)
	}
	var buf []byte
	for n := 0; ; n++ {
		l, err := binary.ReadUvarint(br)
		if errors.Is(err, io.EOF) {
			return m, nil
		}
		if err != nil || l > 1<<24 {
			return m, fmt.Errorf("capfile %s: record %d: bad length", path, n)
		}
		if cap(buf) < int(l) {
			buf = make([]byte, l)
		}
		buf = buf[:l]
		if _, err := io.ReadFull(br, buf); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return m, nil // cut short while recording: keep what is whole
			}
			return m, fmt.Errorf("capfile %s: record %d: %w", path, n, err)
		}
		if err := decode(buf, h); err != nil {
			return m, fmt.Errorf("capfile %s: record %d: %w", path, n, err)
		}
	}
}

var errShort = errors.New("short record")

type reader struct {
	b   []byte
	err error
}

func (r *reader) u() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errShort
		r.b = nil
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes(n int) []byte {
	if n > len(r.b) {
		r.err = errShort
		r.b = nil
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) addr() netip.AddrPort {
	l := r.bytes(1)
	if l == nil {
		return netip.AddrPort{}
	}
	raw := r.bytes(int(l[0]))
	a, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(a, uint16(r.u()))
}

func decode(b []byte, h Handler) error {
	if len(b) == 0 {
		return errShort
	}
	switch b[0] {
	case recData:
		if len(b) < 4 {
			return errShort
		}
		e := &event.Event{Kind: event.Kind(b[1]), Dir: event.Direction(b[2]), Role: event.Role(b[3])}
		r := &reader{b: b[4:]}
		e.EnterNs, e.ExitNs = r.u(), r.u()
		e.PID, e.TID = uint32(r.u()), uint32(r.u())
		e.FD = int32(uint32(r.u()))
		e.SockID = r.u()
		e.NetNS = uint32(r.u())
		e.Cgroup = r.u()
		e.Size, e.Offset = int64(r.u()), int64(r.u())
		e.TCPSeq = uint32(r.u())
		e.GoID, e.ParentGoID = r.u(), r.u()
		e.Local, e.Remote = r.addr(), r.addr()
		e.Comm = string(r.bytes(int(r.u())))
		if p := r.bytes(int(r.u())); len(p) > 0 {
			e.Payload = append([]byte(nil), p...)
		}
		if r.err != nil {
			return r.err
		}
		if h.Data != nil {
			h.Data(e)
		}
	case recGo:
		if len(b) < 2 {
			return errShort
		}
		g := &event.GoEvent{Kind: event.GoEventKind(b[1])}
		r := &reader{b: b[2:]}
		g.Ns, g.PID, g.TID, g.GoID, g.ParentGoID = r.u(), uint32(r.u()), uint32(r.u()), r.u(), r.u()
		if r.err != nil {
			return r.err
		}
		if h.Go != nil {
			h.Go(g)
		}
	case recClock:
		r := &reader{b: b[1:]}
		mono := r.u()
		off, n := binary.Varint(r.b)
		if r.err != nil || n <= 0 {
			return errShort
		}
		if h.Clock != nil {
			h.Clock(mono, off)
		}
	default:
		return fmt.Errorf("unknown record type %d", b[0])
	}
	return nil
}
