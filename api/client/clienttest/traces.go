package clienttest

import (
	"fmt"
	"time"

	"github.com/deeptrace/deeptrace/schemas"
)

// call is one exchange of a scenario: the callee (a traced service, or an
// untraced peer such as a database) and what the callee does in turn.
type call struct {
	svc      string
	op       string
	proto    schemas.Protocol
	dur      time.Duration // callee's time; the caller sees a little more
	gap      time.Duration // after the caller's previous call ended
	calls    []call
	fails    bool
	status   int
	tags     map[string]string
	untraced bool
}

// Scenarios are the root requests the synthetic traces cycle through: a
// small shop behind a gateway, with HTTP, gRPC, Redis, MySQL and
// PostgreSQL calls.
var Scenarios = []string{"GET /api/orders/{id}", "POST /api/orders", "GET /api/users/{id}", "GET /api/catalog"}

func scenario(i int) call {
	redisGet := func(key string) call {
		return call{svc: "redis", op: "GET", proto: schemas.ProtocolRedis, dur: 180 * time.Microsecond, gap: 80 * time.Microsecond,
			untraced: true, tags: map[string]string{"db.system": "redis", "db.statement": "GET " + key}}
	}
	mysql := func(stmt string, d time.Duration) call {
		return call{svc: "mysql", op: stmt, proto: schemas.ProtocolMySQL, dur: d, gap: 120 * time.Microsecond,
			untraced: true, tags: map[string]string{"db.system": "mysql", "db.statement": stmt + " WHERE id = ?"}}
	}
	slow := time.Duration(i%7) * 3 * time.Millisecond
	switch i % len(Scenarios) {
	case 0:
		return call{svc: "gateway", op: Scenarios[0], proto: schemas.ProtocolHTTP1, dur: 24*time.Millisecond + slow, calls: []call{
			{svc: "users", op: "GET /users/{id}", proto: schemas.ProtocolHTTP1, dur: 2 * time.Millisecond, gap: 300 * time.Microsecond,
				calls: []call{redisGet(fmt.Sprintf("user:%d", 100+i))}},
			{svc: "orders", op: "GET /orders/{id}", proto: schemas.ProtocolHTTP1, dur: 15*time.Millisecond + slow, gap: 200 * time.Microsecond, calls: []call{
				mysql("SELECT orders", 4*time.Millisecond+slow),
				{svc: "inventory", op: "/inventory.Stock/Get", proto: schemas.ProtocolGRPC, dur: 3 * time.Millisecond, gap: 150 * time.Microsecond,
					calls: []call{redisGet(fmt.Sprintf("stock:%d", i%40))}},
			}},
		}}
	case 1:
		failing := i%5 == 1
		charge := call{svc: "payments", op: "POST /charge", proto: schemas.ProtocolHTTP1, dur: 38 * time.Millisecond, gap: 300 * time.Microsecond,
			calls: []call{redisGet(fmt.Sprintf("idem:%d", i)), {svc: "redis", op: "SET", proto: schemas.ProtocolRedis, dur: 200 * time.Microsecond,
				gap: 20 * time.Millisecond, untraced: true, tags: map[string]string{"db.system": "redis", "db.statement": fmt.Sprintf("SET idem:%d", i)}}}}
		if failing {
			charge.fails, charge.status = true, 502
		}
		return call{svc: "gateway", op: Scenarios[1], proto: schemas.ProtocolHTTP1, dur: 70*time.Millisecond + slow, calls: []call{
			{svc: "orders", op: "POST /orders", proto: schemas.ProtocolHTTP1, dur: 64*time.Millisecond + slow, gap: 250 * time.Microsecond, calls: []call{
				{svc: "inventory", op: "/inventory.Stock/Reserve", proto: schemas.ProtocolGRPC, dur: 6 * time.Millisecond, gap: 200 * time.Microsecond,
					calls: []call{mysql("UPDATE stock", 3*time.Millisecond)}},
				charge,
				mysql("INSERT orders", 5*time.Millisecond+slow),
			}, fails: failing, status: map[bool]int{true: 500, false: 201}[failing]},
		}, fails: failing, status: map[bool]int{true: 500, false: 201}[failing]}
	case 2:
		return call{svc: "gateway", op: Scenarios[2], proto: schemas.ProtocolHTTP1, dur: 6*time.Millisecond + slow/3, calls: []call{
			{svc: "users", op: "GET /users/{id}", proto: schemas.ProtocolHTTP1, dur: 4*time.Millisecond + slow/3, gap: 200 * time.Microsecond, calls: []call{
				redisGet(fmt.Sprintf("user:%d", 100+i)),
				{svc: "postgres", op: "SELECT users", proto: schemas.ProtocolPostgres, dur: 2*time.Millisecond + slow/3, gap: 100 * time.Microsecond, untraced: true,
					tags: map[string]string{"db.system": "postgresql", "db.statement": "SELECT * FROM users WHERE id = $1"}},
			}},
		}}
	default:
		return call{svc: "gateway", op: Scenarios[3], proto: schemas.ProtocolHTTP1, dur: 11*time.Millisecond + slow, calls: []call{
			{svc: "inventory", op: "/inventory.Catalog/List", proto: schemas.ProtocolGRPC, dur: 8*time.Millisecond + slow, gap: 400 * time.Microsecond, calls: []call{
				mysql("SELECT products", 5*time.Millisecond+slow),
			}},
		}}
	}
}

var addrs = map[string]struct {
	ip   string
	port uint16
}{
	"gateway": {"10.1.0.2", 8080}, "orders": {"10.1.0.3", 8081}, "users": {"10.1.0.4", 8082},
	"inventory": {"10.1.0.5", 9090}, "payments": {"10.1.0.6", 8083}, "redis": {"10.1.0.7", 6379},
	"mysql": {"10.1.0.8", 3306}, "postgres": {"10.1.0.9", 5432},
}

var processes = map[string]string{
	"gateway": "envoy", "orders": "orders", "users": "python3", "inventory": "inventory", "payments": "node",
}

// Trace builds synthetic trace i starting at start: the same i and start
// give the same trace (ids included).
func Trace(i int, start time.Time) schemas.Trace {
	b := &traceBuilder{i: i}
	sc := scenario(i)
	conn := schemas.Conn{ClientIP: "192.168.10.20", ClientPort: uint16(20000 + i%40000), ServerIP: addrs["gateway"].ip, ServerPort: addrs["gateway"].port}
	root := b.server(sc, "", "", 0, start.UnixNano(), conn, b.exchange())
	t := schemas.Trace{Spans: b.spans, Window: start.Truncate(5 * time.Minute), AssembledAt: start.Add(5 * time.Minute).UTC()}
	t.Summarize(&b.spans[root].Span)
	return t
}

type traceBuilder struct {
	i     int
	spans []schemas.TraceSpan
	n     int // spans made
	x     int // exchanges made
}

// exchange is what both ends of one request/response see alike: the
// exchange's number on its connection and the TCP positions of its first
// request and response bytes (which survive address translation).
type exchange struct {
	seq             uint64
	reqTCP, respTCP uint32
}

func (b *traceBuilder) exchange() exchange {
	b.x++
	h := uint32(b.i)*2654435761 + uint32(b.x)*40503
	return exchange{seq: uint64(b.x % 3), reqTCP: h | 1, respTCP: (h ^ 0x9e3779b9) | 1}
}

func (b *traceBuilder) span(c call, role schemas.Role, svc string, start, dur int64, conn schemas.Conn, x exchange) schemas.TraceSpan {
	b.n++
	s := schemas.Span{
		Role: role, Protocol: c.proto, Operation: c.op, StatusCode: 200,
		StartNs: start, EndNs: start + dur,
		ReqBytes: int64(120 + (b.i*31+b.n*17)%800), RespBytes: int64(300 + (b.i*53+b.n*29)%6000),
		PID: uint32(4100 + len(svc)*13), TID: uint32(4100 + len(svc)*13 + b.n%4), Process: processes[svc], Service: svc,
		Host: "node-" + svc, Conn: conn, Seq: x.seq, ReqTCPSeq: x.reqTCP, RespTCPSeq: x.respTCP,
		Tags: map[string]string{}, IngestedAt: time.Unix(0, start+dur).Add(2 * time.Second).UTC(),
	}
	if svc == "orders" || svc == "inventory" {
		s.GoID = uint64(30 + b.n)
	}
	switch c.proto {
	case schemas.ProtocolHTTP1:
		s.Method, s.Path = splitOp(c.op)
		s.Tags["http.method"] = s.Method
	case schemas.ProtocolGRPC:
		s.Path = c.op
		s.Tags["rpc.system"] = "grpc"
	}
	for k, v := range c.tags {
		s.Tags[k] = v
	}
	if c.status != 0 {
		s.StatusCode = c.status
	}
	if c.fails {
		s.Error = true
		if c.proto == schemas.ProtocolGRPC {
			s.StatusCode, s.StatusText = 14, "UNAVAILABLE"
		} else {
			s.StatusText = "Bad Gateway"
			if s.StatusCode == 500 {
				s.StatusText = "Internal Server Error"
			}
		}
	}
	if c.proto == schemas.ProtocolHTTP1 {
		s.Tags["http.status_code"] = fmt.Sprint(s.StatusCode)
	}
	s.SpanID = schemas.SpanID(s.Host, conn, s.Seq, s.ReqTCPSeq, role)
	s.Finish()
	return schemas.TraceSpan{Span: s}
}

func splitOp(op string) (string, string) {
	for i := 0; i < len(op); i++ {
		if op[i] == ' ' {
			return op[:i], op[i+1:]
		}
	}
	return "", op
}

// server adds c's server span (parent is the caller's client span) and its
// calls; it returns the span's index.
func (b *traceBuilder) server(c call, parent, link string, depth int, start int64, conn schemas.Conn, x exchange) int {
	s := b.span(c, schemas.RoleServer, c.svc, start, int64(c.dur), conn, x)
	s.TraceParentID, s.Depth, s.LinkKind = parent, depth, link
	b.spans = append(b.spans, s)
	idx := len(b.spans) - 1
	at := start + int64(150*time.Microsecond)
	for k, cc := range c.calls {
		at += int64(cc.gap)
		dur := int64(cc.dur) + int64(300*time.Microsecond)
		cconn := schemas.Conn{ClientIP: addrs[c.svc].ip, ClientPort: uint16(32768 + (b.i*11+b.n*7+k)%28000),
			ServerIP: addrs[cc.svc].ip, ServerPort: addrs[cc.svc].port}
		sconn := cconn
		link := schemas.LinkTuple
		if cc.svc == "payments" {
			// Payments sits behind a Kubernetes Service: the caller
			// connects to its virtual address, DNAT hands the connection
			// to the pod, and assembly matches the TCP positions.
			cconn.ServerIP, cconn.ServerPort = "10.96.0.16", 80
			link = schemas.LinkTCPSeq
		}
		x := b.exchange()
		cl := b.span(cc, schemas.RoleClient, c.svc, at, dur, cconn, x)
		cl.Process, cl.PID = processes[c.svc], b.spans[idx].PID
		cl.TraceParentID, cl.Depth, cl.LinkKind = b.spans[idx].SpanID, depth+1, schemas.LinkLocal
		cl.ParentSpanID = b.spans[idx].SpanID
		cl.ParentConfidence = 0.97 - float64((b.i+k)%5)*0.08
		b.spans = append(b.spans, cl)
		if !cc.untraced {
			b.server(cc, cl.SpanID, link, depth+2, at+int64(150*time.Microsecond), sconn, x)
		}
		at += dur
	}
	return idx
}
