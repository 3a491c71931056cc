// Package assembletest generates synthetic traces of a realistic shape, as
// the spans agents on several hosts would have written, with the tree each
// must assemble into. Tests and benchmarks of assembly, the worker and the
// pipeline share it.
package assembletest

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/deeptrace/deeptrace/schemas"
)

// Config shapes the generated traces. The zero value of a field takes the
// default in parentheses.
type Config struct {
	Traces int       // traces to generate (100)
	Start  time.Time // first root's start (now)
	// Spacing is the time between two roots' starts (1ms).
	Spacing  time.Duration
	Seed     uint64
	Services int // services below the gateway (8)
	// MaxFanout is the most calls one server span makes (3); MaxDepth the
	// deepest service chain (4).
	MaxFanout, MaxDepth int
	// NATFraction of the calls go through a Service VIP (DNAT): the client
	// span names the VIP, the server span the pod, and only the TCP
	// positions join them (0.3).
	NATFraction float64
	// NoTCPFraction of the calls carry no TCP positions at either end and
	// join on tuple and exchange number (0.2).
	NoTCPFraction float64
	// ExternalFraction of the calls go to a service no agent sees: a leaf
	// client span (0.05).
	ExternalFraction float64
	// HostSkew is the largest clock offset of a host (0.5ms).
	HostSkew time.Duration
	// Services are named with this prefix ("svc").
	ServicePrefix string
}

// Set is the generated spans and the trees they must assemble into.
type Set struct {
	Spans []schemas.Span
	// Parent maps each span id to its expected parent in the trace tree
	// ("" for a root).
	Parent map[string]string
	// Roots lists the root span id of each trace, in order.
	Roots []string
	// TraceOf maps each span id to its root span id.
	TraceOf map[string]string

	sizes map[string]int
}

type host struct {
	name   string
	ip     string
	vip    string
	port   uint16
	offset int64 // clock offset, ns
}

type gen struct {
	cfg   Config
	rng   *rand.Rand
	hosts []host
	set   *Set
	port  uint16
	// pool keeps one connection per (caller, callee) pair, so exchanges
	// share connections as keep-alive pools do.
	pool map[[2]int]*conn
}

type conn struct {
	port     uint16
	seq      uint64
	req, rsp uint32
	nat      bool // reached through the callee's VIP
	noTCP    bool // the capture saw no TCP positions
}

// Generate builds the spans of cfg.Traces traces.
func Generate(cfg Config) *Set {
	if cfg.Traces <= 0 {
		cfg.Traces = 100
	}
	if cfg.Start.IsZero() {
		cfg.Start = time.Now()
	}
	if cfg.Spacing <= 0 {
		cfg.Spacing = time.Millisecond
	}
	if cfg.Services <= 0 {
		cfg.Services = 8
	}
	if cfg.MaxFanout <= 0 {
		cfg.MaxFanout = 3
	}
	if cfg.MaxDepth <= 0 {
		cfg.MaxDepth = 4
	}
	if cfg.NATFraction == 0 {
		cfg.NATFraction = 0.3
	}
	if cfg.NoTCPFraction == 0 {
		cfg.NoTCPFraction = 0.2
	}
	if cfg.ExternalFraction == 0 {
		cfg.ExternalFraction = 0.05
	}
	if cfg.HostSkew == 0 {
		cfg.HostSkew = 500 * time.Microsecond
	}
	if cfg.ServicePrefix == "" {
		cfg.ServicePrefix = "svc"
	}
	g := &gen{cfg: cfg, rng: rand.New(rand.NewPCG(cfg.Seed, 0x5eed)), pool: map[[2]int]*conn{},
		set: &Set{Parent: map[string]string{}, TraceOf: map[string]string{}}, port: 20000}
	// Host 0 is the gateway; the last host is the external service.
	for i := 0; i <= cfg.Services+1; i++ {
		name := cfg.ServicePrefix + fmt.Sprint(i)
		if i == 0 {
			name = cfg.ServicePrefix + "-gateway"
		}
		g.hosts = append(g.hosts, host{
			name: name, ip: fmt.Sprintf("10.1.%d.%d", i/200, i%200+10), vip: fmt.Sprintf("10.96.%d.%d", i/200, i%200+10),
			port: uint16(8000 + i), offset: g.rng.Int64N(2*int64(cfg.HostSkew)+1) - int64(cfg.HostSkew),
		})
	}
	for t := 0; t < cfg.Traces; t++ {
		start := cfg.Start.Add(time.Duration(t) * cfg.Spacing).UnixNano()
		dur := int64(2*time.Millisecond) + g.rng.Int64N(int64(20*time.Millisecond))
		// The root: the gateway's server span for a request from an
		// uncaptured client.
		root := g.span(0, schemas.RoleServer, schemas.Conn{ClientIP: "192.168.0.1", ClientPort: g.nextPort(), ServerIP: g.hosts[0].ip, ServerPort: g.hosts[0].port},
			uint64(0), 0, 0, start, start+dur, "GET /api/"+fmt.Sprint(t%17))
		g.add(root, "", root.SpanID)
		g.children(0, root, root.SpanID, 1)
	}
	return g.set
}

func (g *gen) nextPort() uint16 {
	g.port++
	if g.port < 20000 {
		g.port = 20000
	}
	return g.port
}

func (g *gen) add(s schemas.Span, parent, root string) {
	g.set.Spans = append(g.set.Spans, s)
	g.set.Parent[s.SpanID] = parent
	g.set.TraceOf[s.SpanID] = root
	if parent == "" {
		g.set.Roots = append(g.set.Roots, s.SpanID)
	}
}

// span builds one span on host h, its times given on the true clock and
// stamped with the host's offset.
func (g *gen) span(h int, role schemas.Role, c schemas.Conn, seq uint64, req, rsp uint32, start, end int64, op string) schemas.Span {
	hs := g.hosts[h]
	s := schemas.Span{
		Role: role, Protocol: schemas.ProtocolHTTP1, Operation: op, Method: "GET", StatusCode: 200,
		StartNs: start + hs.offset, EndNs: end + hs.offset, ReqBytes: 120, RespBytes: 800,
		PID: uint32(1000 + h), TID: uint32(1000 + h), Process: hs.name, Service: hs.name, Host: "host-" + hs.name,
		Conn: c, Seq: seq, ReqTCPSeq: req, RespTCPSeq: rsp,
	}
	s.SpanID = schemas.SpanID(s.Host, s.Conn, s.Seq, s.ReqTCPSeq, s.Role)
	s.Finish()
	return s
}

// children adds the calls server span parent (on host h) makes.
func (g *gen) children(h int, parent schemas.Span, root string, depth int) {
	if depth > g.cfg.MaxDepth {
		return
	}
	n := g.rng.IntN(g.cfg.MaxFanout + 1)
	if depth == 1 && n == 0 {
		n = 1
	}
	// True-clock bounds of the parent.
	pStart, pEnd := parent.StartNs-g.hosts[h].offset, parent.EndNs-g.hosts[h].offset
	slot := (pEnd - pStart) / int64(n+1)
	for k := 0; k < n; k++ {
		callee := 1 + g.rng.IntN(g.cfg.Services)
		external := g.rng.Float64() < g.cfg.ExternalFraction
		if external {
			callee = len(g.hosts) - 1
		}
		cStart := pStart + slot*int64(k) + slot/8
		cEnd := cStart + slot*3/4
		if cEnd <= cStart+int64(20*time.Microsecond) {
			return
		}
		key := [2]int{h, callee}
		cn := g.pool[key]
		if cn == nil || g.rng.IntN(8) == 0 {
			cn = &conn{port: g.nextPort(), req: g.rng.Uint32() | 1, rsp: g.rng.Uint32() | 1,
				noTCP: g.rng.Float64() < g.cfg.NoTCPFraction}
			cn.nat = !external && !cn.noTCP && g.rng.Float64() < g.cfg.NATFraction
			g.pool[key] = cn
		}
		seq := cn.seq
		cn.seq++
		req, rsp := cn.req, cn.rsp
		cn.req += 120
		cn.rsp += 800
		if cn.noTCP {
			req, rsp = 0, 0
		}
		ch := g.hosts[callee]
		serverConn := schemas.Conn{ClientIP: g.hosts[h].ip, ClientPort: cn.port, ServerIP: ch.ip, ServerPort: ch.port}
		clientConn := serverConn
		if cn.nat {
			clientConn.ServerIP, clientConn.ServerPort = ch.vip, 80
		}
		op := fmt.Sprintf("GET /%s/%d", ch.name, k)
		cs := g.span(h, schemas.RoleClient, clientConn, seq, req, rsp, cStart, cEnd, op)
		cs.ParentSpanID = parent.SpanID
		cs.ParentConfidence = 0.8 + 0.2*g.rng.Float64()
		g.add(cs, parent.SpanID, root)
		if external {
			continue
		}
		lat := int64(50*time.Microsecond) + g.rng.Int64N(int64(50*time.Microsecond))
		ss := g.span(callee, schemas.RoleServer, serverConn, seq, req, rsp, cStart+lat, cEnd-lat, op)
		g.add(ss, cs.SpanID, root)
		g.children(callee, ss, root, depth+1)
	}
}

// CheckTrace compares an assembled trace with the tree the set expects for
// its root and returns what differs, or nil.
func (s *Set) CheckTrace(t *schemas.Trace) error {
	if s.sizes == nil {
		s.sizes = s.Sizes()
	}
	want := s.sizes[t.RootSpanID]
	if len(t.Spans) != want {
		return fmt.Errorf("trace of root %s: %d spans, want %d", t.RootSpanID, len(t.Spans), want)
	}
	for _, ts := range t.Spans {
		wp, ok := s.Parent[ts.SpanID]
		if !ok {
			return fmt.Errorf("trace of root %s: unknown span %s", t.RootSpanID, ts.SpanID)
		}
		if s.TraceOf[ts.SpanID] != t.RootSpanID {
			return fmt.Errorf("trace of root %s: span %s belongs to root %s", t.RootSpanID, ts.SpanID, s.TraceOf[ts.SpanID])
		}
		if ts.TraceParentID != wp {
			return fmt.Errorf("trace of root %s: span %s has parent %q, want %q", t.RootSpanID, ts.SpanID, ts.TraceParentID, wp)
		}
	}
	return nil
}

// Sizes counts the spans of each root's trace.
func (s *Set) Sizes() map[string]int {
	out := make(map[string]int, len(s.Roots))
	for _, r := range s.TraceOf {
		out[r]++
	}
	return out
}
