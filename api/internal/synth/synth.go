// Package synth makes plausible assembled traces for the API's tests and
// benchmarks: a gateway request fanning out over traced services and
// untraced databases, with deterministic ids, timings, errors and tags.
package synth

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/deeptrace/deeptrace/schemas"
)

// Services are the traced services, in call order: the gateway calls
// orders and users; orders calls inventory and payments.
var Services = []string{"gateway", "orders", "users", "inventory", "payments"}

// callees lists who each service calls. "redis" and "mysql" are not traced:
// only the caller's client span exists.
var callees = map[string][]string{
	"gateway":   {"orders", "users"},
	"orders":    {"inventory", "payments", "mysql"},
	"users":     {"redis"},
	"inventory": {"mysql", "redis"},
	"payments":  {"redis"},
}

// RootOperations are the gateway's operations.
var RootOperations = []string{"GET /api/orders/{id}", "POST /api/orders", "GET /api/users/{id}", "GET /api/catalog"}

var ops = map[string]string{
	"orders": "GET /orders/{id}", "users": "GET /users/{id}", "inventory": "/inventory.Stock/Reserve",
	"payments": "POST /charge", "redis": "GET", "mysql": "SELECT orders",
}

var peers = map[string]struct {
	ip   string
	port uint16
	p    schemas.Protocol
}{
	"gateway": {"10.0.0.1", 8080, schemas.ProtocolHTTP1}, "orders": {"10.0.0.2", 8081, schemas.ProtocolHTTP1},
	"users": {"10.0.0.3", 8082, schemas.ProtocolHTTP1}, "inventory": {"10.0.0.4", 9090, schemas.ProtocolGRPC},
	"payments": {"10.0.0.5", 8083, schemas.ProtocolHTTP1}, "redis": {"10.0.0.6", 6379, schemas.ProtocolRedis},
	"mysql": {"10.0.0.7", 3306, schemas.ProtocolMySQL},
}

// Failing reports whether trace i has a failed span (one in 10).
func Failing(i int) bool { return i%10 == 3 }

// RootDuration is trace i's duration: 1 ms to about 800 ms.
func RootDuration(i int) time.Duration {
	return time.Millisecond + time.Duration((i*7919)%800)*time.Millisecond
}

// RootOperation is trace i's root operation.
func RootOperation(i int) string { return RootOperations[i%len(RootOperations)] }

// Trace builds trace i, starting at start, with about spans spans (at
// least 2; the gateway's server span plus calls). The same i and start give
// the same trace.
func Trace(i int, start time.Time, spans int) schemas.Trace {
	b := &builder{i: i, rng: rand.New(rand.NewPCG(uint64(i), 42)), start: start.UnixNano()}
	dur := int64(RootDuration(i))
	root := b.server("gateway", RootOperation(i), "", b.start, dur, conn0(i), 0)
	root.Tags["http.method"] = root.Method
	root.Finish()
	for len(b.spans) < spans {
		// Pick a server span that has callees and add one call under it.
		p := b.servers[b.rng.IntN(len(b.servers))]
		parent := &b.spans[p]
		cs := callees[parent.Service]
		callee := cs[b.rng.IntN(len(cs))]
		b.call(p, callee)
	}
	if Failing(i) {
		// The deepest span fails; its callers see a 500 where HTTP.
		last := &b.spans[len(b.spans)-1]
		last.Error = true
		last.StatusCode = 500
		if last.Protocol == schemas.ProtocolHTTP1 {
			last.Tags["http.status_code"] = "500"
		}
		last.Finish()
	}
	t := schemas.Trace{Spans: b.spans, Window: start.Truncate(time.Minute), AssembledAt: start.Add(2 * time.Minute)}
	t.Summarize(&b.spans[0].Span)
	return t
}

// conn0 is the connection of trace i's incoming request.
func conn0(i int) schemas.Conn {
	return schemas.Conn{ClientIP: "192.168.1.9", ClientPort: uint16(20000 + i%40000), ServerIP: "10.0.0.1", ServerPort: 8080}
}

type builder struct {
	i       int
	rng     *rand.Rand
	start   int64
	spans   []schemas.TraceSpan
	servers []int // indices of server spans that call on
	seq     uint64
}

func (b *builder) id() string {
	var buf [16]byte
	binary.BigEndian.PutUint64(buf[:8], uint64(b.i))
	binary.BigEndian.PutUint64(buf[8:], uint64(len(b.spans)))
	h := sha256.Sum256(buf[:])
	return hex.EncodeToString(h[:8])
}

func (b *builder) span(svc, op string, role schemas.Role, parent string, start, dur int64, conn schemas.Conn, depth int) *schemas.TraceSpan {
	s := schemas.TraceSpan{
		Span: schemas.Span{
			SpanID: b.id(), Role: role, Operation: op, StartNs: start, EndNs: start + dur,
			StatusCode: 200, PID: uint32(1000 + len(svc)), TID: uint32(1000 + b.rng.IntN(50)),
			Process: svc, Service: svc, Host: "host-" + svc, Conn: conn, Seq: b.seq,
			ReqBytes: int64(100 + b.rng.IntN(900)), RespBytes: int64(200 + b.rng.IntN(4000)),
			Tags: map[string]string{}, IngestedAt: time.Unix(0, start+dur).Add(time.Second).UTC(),
		},
		TraceParentID: parent,
		Depth:         depth,
	}
	b.seq++
	b.spans = append(b.spans, s)
	return &b.spans[len(b.spans)-1]
}

func (b *builder) server(svc, op, parent string, start, dur int64, conn schemas.Conn, depth int) *schemas.TraceSpan {
	s := b.span(svc, op, schemas.RoleServer, parent, start, dur, conn, depth)
	s.Protocol = peers[svc].p
	if s.Protocol == schemas.ProtocolHTTP1 {
		s.Method, s.Path, _ = strings.Cut(op, " ")
		s.Tags["http.status_code"] = "200"
	}
	if parent != "" {
		s.LinkKind = schemas.LinkTuple
	}
	s.Finish()
	if len(callees[svc]) > 0 {
		b.servers = append(b.servers, len(b.spans)-1)
	}
	return s
}

// call adds a client span under server span p towards callee, and the
// callee's server span when it is traced.
func (b *builder) call(p int, callee string) {
	parent := b.spans[p]
	room := parent.DurationNs / 2
	if room < 2000 {
		room = 2000
	}
	off := b.rng.Int64N(max(parent.DurationNs-room, 1))
	dur := 1000 + b.rng.Int64N(room)
	pe := peers[callee]
	conn := schemas.Conn{
		ClientIP: peers[parent.Service].ip, ClientPort: uint16(30000 + b.rng.IntN(30000)),
		ServerIP: pe.ip, ServerPort: pe.port,
	}
	op := ops[callee]
	cl := b.span(parent.Service, op, schemas.RoleClient, parent.SpanID, parent.StartNs+off, dur, conn, parent.Depth+1)
	cl.Protocol = pe.p
	cl.LinkKind = schemas.LinkLocal
	cl.ParentSpanID, cl.ParentConfidence = parent.SpanID, 0.9
	switch pe.p {
	case schemas.ProtocolRedis:
		cl.Tags["db.system"] = "redis"
		cl.Tags["db.statement"] = "GET user:" + strconv.Itoa(b.i)
	case schemas.ProtocolMySQL:
		cl.Tags["db.system"] = "mysql"
	case schemas.ProtocolHTTP1:
		cl.Tags["http.method"], _, _ = strings.Cut(op, " ")
		cl.Tags["http.status_code"] = "200"
	case schemas.ProtocolGRPC:
		cl.Tags["rpc.system"] = "grpc"
	}
	cl.Finish()
	clientID := cl.SpanID
	if _, traced := callees[callee]; traced {
		// The callee sees the request a little after the caller sent it.
		b.server(callee, op, clientID, parent.StartNs+off+100, dur-200, conn, parent.Depth+2)
	}
}

// Name is a short description of trace i for test messages.
func Name(i int) string { return fmt.Sprintf("trace %d (%s)", i, RootOperation(i)) }
