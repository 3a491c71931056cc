package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/netns"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/worker/assemble/assembletest"
)

// The workload of the multi-host test, real traffic over real sockets:
//
//	host A: loadgen ─▶ gateway :8000 ──▶ 10.96.0.10:80 (a Service VIP, DNAT'ed by A)
//	host B:                               backend :8080 ──▶ host A cache :6380
//
// Each exchange becomes the spans the agents would write: the tuple each
// end's socket shows, the exchange's number on its connection, and the
// TCP sequence positions of request and response, read from the handshake
// each host captured on its own eth0 plus the bytes that went before. The
// gateway's own server spans (loadgen reaches it over loopback) carry no
// positions and join nothing: they are the roots. Local parents are known
// exactly (the handler that made the call), with confidence 1.

const vip = "10.96.0.10:80"

// recorder collects each host's spans and the expected trees.
type recorder struct {
	mu    sync.Mutex
	spans map[string][]schemas.Span // by host
	set   *assembletest.Set
}

func newRecorder() *recorder {
	return &recorder{spans: map[string][]schemas.Span{}, set: &assembletest.Set{Parent: map[string]string{}, TraceOf: map[string]string{}}}
}

func (r *recorder) add(s schemas.Span, parent, root string) {
	s.Finish()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.spans[s.Host] = append(r.spans[s.Host], s)
	r.set.Spans = append(r.set.Spans, s)
	r.set.Parent[s.SpanID] = parent
	r.set.TraceOf[s.SpanID] = root
	if parent == "" {
		r.set.Roots = append(r.set.Roots, s.SpanID)
	}
}

// writeFile writes a host's spans as JSON lines (what the agent's
// --spans-out writes).
func (r *recorder) writeFile(t *testing.T, host, path string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	enc := json.NewEncoder(f)
	for _, s := range r.spans[host] {
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
	}
	return len(r.spans[host])
}

// endpoint is one end of a connection as its host's agent tracks it.
type endpoint struct {
	host     string
	conn     schemas.Conn
	c        net.Conn
	rd       *bufio.Reader
	seq      uint64 // next exchange number
	isnLocal uint32 // this end's ISN
	isnPeer  uint32
	sent     uint32 // bytes sent and received so far
	recv     uint32
	tcp      bool // positions known (the handshake crossed eth0)
}

func connOf(clientSide bool, c net.Conn) schemas.Conn {
	l, r := c.LocalAddr().(*net.TCPAddr), c.RemoteAddr().(*net.TCPAddr)
	if clientSide {
		return schemas.Conn{ClientIP: l.IP.String(), ClientPort: uint16(l.Port), ServerIP: r.IP.String(), ServerPort: uint16(r.Port)}
	}
	return schemas.Conn{ClientIP: r.IP.String(), ClientPort: uint16(r.Port), ServerIP: l.IP.String(), ServerPort: uint16(l.Port)}
}

// newEndpoint wraps a connection; cap is the host's capture (nil: the
// connection does not cross eth0 and has no positions).
func newEndpoint(t *testing.T, host string, c net.Conn, clientSide bool, capt *netns.Capture) *endpoint {
	e := &endpoint{host: host, conn: connOf(clientSide, c), c: c, rd: bufio.NewReader(c)}
	if capt != nil {
		client := c.LocalAddr().String()
		if !clientSide {
			client = c.RemoteAddr().String()
		}
		ci, si, err := capt.ISN(client)
		if err != nil {
			t.Error(err)
		} else {
			e.tcp = true
			if clientSide {
				e.isnLocal, e.isnPeer = ci, si
			} else {
				e.isnLocal, e.isnPeer = si, ci
			}
		}
	}
	return e
}

// positions are the TCP positions of the next request and response.
func (e *endpoint) positions(clientSide bool) (req, resp uint32) {
	if !e.tcp {
		return 0, 0
	}
	if clientSide {
		return e.isnLocal + 1 + e.sent, e.isnPeer + 1 + e.recv
	}
	return e.isnPeer + 1 + e.recv, e.isnLocal + 1 + e.sent
}

func (e *endpoint) writeLine(s string) error {
	_, err := e.c.Write([]byte(s))
	e.sent += uint32(len(s))
	return err
}

func (e *endpoint) readLine() (string, error) {
	l, err := e.rd.ReadString('\n')
	e.recv += uint32(len(l))
	return l, err
}

// call makes one exchange as a client and records its span. The request
// line carries the trace's root and this client span's id: the test's
// ground truth of which server span answers which call (assembly never
// reads payloads; it must find the pair from the spans alone).
func (e *endpoint) call(service, op string, r request, parent *schemas.Span, rec *recorder) (schemas.Span, error) {
	req, resp := e.positions(true)
	s := schemas.Span{Role: schemas.RoleClient, Protocol: schemas.ProtocolUnknown, Operation: op, Service: service, Process: service,
		Host: e.host, Conn: e.conn, Seq: e.seq, ReqTCPSeq: req, RespTCPSeq: resp, StartNs: time.Now().UnixNano(), StatusCode: 200}
	e.seq++
	s.SpanID = schemas.SpanID(s.Host, s.Conn, s.Seq, s.ReqTCPSeq, s.Role)
	s.ParentSpanID, s.ParentConfidence = parent.SpanID, 1
	if err := e.writeLine(fmt.Sprintf("%s %d %d %s %s\n", op, r.id, r.work.Microseconds(), r.root, s.SpanID)); err != nil {
		return s, err
	}
	if _, err := e.readLine(); err != nil {
		return s, err
	}
	s.EndNs = time.Now().UnixNano()
	rec.add(s, parent.SpanID, r.root)
	return s, nil
}

// pool is a connection pool to one address, as an HTTP client keeps.
type pool struct {
	ch chan *endpoint
}

func newPool(t *testing.T, h *netns.Host, addr string, n int, capt *netns.Capture) *pool {
	p := &pool{ch: make(chan *endpoint, n)}
	for i := 0; i < n; i++ {
		c, err := h.Dial(addr)
		if err != nil {
			t.Fatalf("dial %s from %s: %v", addr, h.Name, err)
		}
		t.Cleanup(func() { c.Close() })
		p.ch <- newEndpoint(t, h.Name, c, true, capt)
	}
	return p
}

func (p *pool) do(fn func(e *endpoint) error) error {
	e := <-p.ch
	defer func() { p.ch <- e }()
	return fn(e)
}

// request is what travels down a trace: its number, how long the backend
// works on it, and the root span's id.
type request struct {
	id   int
	work time.Duration
	root string
}

// serve runs a line server on ln: each request line becomes a server span
// of service on host, and handler makes its calls (the span's children).
func serve(t *testing.T, ln net.Listener, host, service string, capt *netns.Capture, rec *recorder,
	handler func(r request, self *schemas.Span) error) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				e := newEndpoint(t, host, c, false, capt)
				for {
					req, resp := e.positions(false)
					line, err := e.readLine()
					if err != nil {
						return
					}
					s := schemas.Span{Role: schemas.RoleServer, Protocol: schemas.ProtocolUnknown, Service: service, Process: service,
						Host: host, Conn: e.conn, Seq: e.seq, ReqTCPSeq: req, RespTCPSeq: resp, StartNs: time.Now().UnixNano(), StatusCode: 200}
					e.seq++
					s.SpanID = schemas.SpanID(s.Host, s.Conn, s.Seq, s.ReqTCPSeq, s.Role)
					f := strings.Fields(line)
					if len(f) != 5 {
						t.Errorf("%s: bad request line %q", service, line)
						return
					}
					s.Operation = f[0]
					var r request
					r.id, _ = strconv.Atoi(f[1])
					w, _ := strconv.Atoi(f[2])
					r.work = time.Duration(w) * time.Microsecond
					r.root = f[3]
					caller := f[4]
					if caller == "-" {
						// Called from outside the traced hosts: the root.
						caller, r.root = "", s.SpanID
					}
					if err := handler(r, &s); err != nil {
						t.Errorf("%s handler: %v", service, err)
						return
					}
					if err := e.writeLine(fmt.Sprintf("OK %d %s\n", r.id, strings.Repeat("x", 40+r.id%50))); err != nil {
						return
					}
					s.EndNs = time.Now().UnixNano()
					rec.add(s, caller, r.root)
				}
			}()
		}
	}()
}
