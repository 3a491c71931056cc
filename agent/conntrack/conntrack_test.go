package conntrack

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/detect"
	"github.com/deeptrace/deeptrace/schemas"
)

type sink struct {
	spans    []schemas.Span
	inflight []InFlight
}

func (s *sink) Span(sp schemas.Span, _ *protocol.Exchange) { s.spans = append(s.spans, sp) }
func (s *sink) RequestStart(r InFlight)                    { s.inflight = append(s.inflight, r) }

var (
	cli = netip.MustParseAddrPort("127.0.0.1:40001")
	srv = netip.MustParseAddrPort("127.0.0.1:8080")
)

const (
	req  = "GET /users/42 HTTP/1.1\r\nHost: x\r\n\r\n"
	resp = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
)

// side builds the events one end of the connection sees: its own pid and
// socket, its own view of local/remote, the same TCP positions.
func side(role event.Role, pid uint32, sock uint64, reqSeq, respSeq uint32, t0 uint64) []event.Event {
	local, remote := cli, srv
	out, in := event.Egress, event.Ingress
	first := event.KindConnect
	if role == event.RoleServer {
		local, remote = srv, cli
		out, in = event.Ingress, event.Egress
		first = event.KindAccept
	}
	base := event.Event{PID: pid, TID: pid + 1, Comm: "svc", SockID: sock, Local: local, Remote: remote, Role: role}
	ev := func(k event.Kind, d event.Direction, at uint64, seq uint32, size int64, off int64, p string) event.Event {
		e := base
		e.Kind, e.Dir, e.EnterNs, e.ExitNs, e.TCPSeq, e.Size, e.Offset, e.Payload = k, d, at, at+10, seq, size, off, []byte(p)
		return e
	}
	return []event.Event{
		ev(first, 0, t0, 0, 0, 0, ""),
		// the request leaves in one call (client write / server read)
		ev(event.KindData, out, t0+100, reqSeq, int64(len(req)), 0, req),
		// the response arrives in one call whose capture was split in two
		// pieces at offset 20
		ev(event.KindData, in, t0+1000, respSeq, int64(len(resp)), 0, resp[:20]),
		ev(event.KindData, in, t0+1000, respSeq, int64(len(resp)), 20, resp[20:]),
		ev(event.KindClose, 0, t0+2000, 0, 0, 0, ""),
	}
}

func newTracker(t *testing.T, s *sink) *Tracker {
	tr, err := New(Config{Host: "h1", Wall: func(m uint64) int64 { return int64(m) + 1e18 }}, detect.Registry{}, s)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// The caller's client span and the callee's server span of one exchange
// carry the same connection and TCP positions: assembly's join key.
func TestBothEndsShareJoinKey(t *testing.T) {
	s := &sink{}
	tr := newTracker(t, s)
	for _, evs := range [][]event.Event{side(event.RoleClient, 100, 1, 5000, 9000, 0), side(event.RoleServer, 200, 2, 5000, 9000, 50)} {
		for i := range evs {
			tr.Handle(&evs[i])
		}
	}
	if len(s.spans) != 2 {
		t.Fatalf("%d spans, want 2: %+v", len(s.spans), s.spans)
	}
	c, sv := s.spans[0], s.spans[1]
	if c.Role != schemas.RoleClient || sv.Role != schemas.RoleServer {
		t.Fatalf("roles %s %s", c.Role, sv.Role)
	}
	want := schemas.Conn{ClientIP: "127.0.0.1", ClientPort: 40001, ServerIP: "127.0.0.1", ServerPort: 8080}
	if c.Conn != want || sv.Conn != want {
		t.Fatalf("conns %v / %v, want %v", c.Conn, sv.Conn, want)
	}
	if c.ReqTCPSeq != 5000 || sv.ReqTCPSeq != 5000 || c.RespTCPSeq != 9000 || sv.RespTCPSeq != 9000 {
		t.Fatalf("tcp seqs client %d/%d server %d/%d", c.ReqTCPSeq, c.RespTCPSeq, sv.ReqTCPSeq, sv.RespTCPSeq)
	}
	if c.Operation != "GET /users/{id}" || c.Path != "/users/42" || c.StatusCode != 200 || c.RespBytes != int64(len(resp)) {
		t.Fatalf("client span %+v", c)
	}
	if c.StartNs != 1e18+100 || c.EndNs != 1e18+1010 {
		t.Fatalf("client span times %d..%d", c.StartNs, c.EndNs)
	}
	if c.SpanID == sv.SpanID || c.SpanID == "" {
		t.Fatalf("span ids %q %q", c.SpanID, sv.SpanID)
	}
	if len(s.inflight) != 1 || s.inflight[0].SpanID != sv.SpanID || s.inflight[0].TID != 201 {
		t.Fatalf("in-flight %+v, want the server span %s on tid 201", s.inflight, sv.SpanID)
	}
	if st := tr.Stats(); st.OpenConns != 0 || st.Conns != 2 || st.Exchanges != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// Replaying the same events gives the same span ids (idempotent writes).
func TestSpanIDsStable(t *testing.T) {
	run := func() []string {
		s := &sink{}
		tr := newTracker(t, s)
		evs := side(event.RoleServer, 200, 2, 5000, 9000, 50)
		for i := range evs {
			tr.Handle(&evs[i])
		}
		var ids []string
		for _, sp := range s.spans {
			ids = append(ids, sp.SpanID)
		}
		return ids
	}
	a, b := run(), run()
	if len(a) != 1 || a[0] != b[0] {
		t.Fatalf("ids %v vs %v", a, b)
	}
}

// A connection first seen mid-stream (no connect/accept) gets its role from
// which side sends what looks like a request.
func TestRoleFromFirstBytes(t *testing.T) {
	s := &sink{}
	tr := newTracker(t, s)
	evs := side(event.RoleServer, 200, 2, 5000, 9000, 50)[1:] // no accept
	for i := range evs {
		evs[i].Role = event.RoleUnknown
		tr.Handle(&evs[i])
	}
	if len(s.spans) != 1 || s.spans[0].Role != schemas.RoleServer || s.spans[0].ServerPort != 8080 {
		t.Fatalf("spans %+v", s.spans)
	}
}

// A request whose response never comes is still a span, marked failed.
func TestNoResponseOnClose(t *testing.T) {
	s := &sink{}
	tr := newTracker(t, s)
	evs := side(event.RoleClient, 100, 1, 5000, 9000, 0)
	for _, i := range []int{0, 1, 4} {
		tr.Handle(&evs[i])
	}
	if len(s.spans) != 1 || !s.spans[0].Error || s.spans[0].EndNs < s.spans[0].StartNs {
		t.Fatalf("spans %+v", s.spans)
	}
}

// Pipelined Redis commands on one connection each become a span with its
// own sequence number and TCP position.
func TestPipelinedRedis(t *testing.T) {
	s := &sink{}
	tr := newTracker(t, s)
	cmds := "*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\n"
	replies := "$1\r\n1\r\n$-1\r\n"
	base := event.Event{PID: 7, TID: 8, Comm: "cli", SockID: 3, Local: cli, Remote: srv, Role: event.RoleClient, Kind: event.KindData}
	w := base
	w.Dir, w.EnterNs, w.ExitNs, w.TCPSeq, w.Size, w.Payload = event.Egress, 10, 20, 100, int64(len(cmds)), []byte(cmds)
	r := base
	r.Dir, r.EnterNs, r.ExitNs, r.TCPSeq, r.Size, r.Payload = event.Ingress, 30, 40, 700, int64(len(replies)), []byte(replies)
	tr.Handle(&w)
	tr.Handle(&r)
	tr.Flush()
	if len(s.spans) != 2 {
		t.Fatalf("%d spans: %+v", len(s.spans), s.spans)
	}
	if s.spans[0].Seq != 0 || s.spans[1].Seq != 1 || s.spans[1].ReqTCPSeq != 100+uint32(len(cmds)/2) {
		t.Fatalf("seq/tcp: %d/%d %d/%d", s.spans[0].Seq, s.spans[0].ReqTCPSeq, s.spans[1].Seq, s.spans[1].ReqTCPSeq)
	}
	if s.spans[0].SpanID == s.spans[1].SpanID {
		t.Fatal("pipelined spans share an id")
	}
}

// turn is one exchange of playWritesFirst: the request and answer bytes,
// and each call's entry and return.
type turn struct {
	req, resp           []byte
	reqEnter, reqExit   uint64
	respEnter, respExit uint64
}

// playWritesFirst plays turns on one connection of base (its role decides
// which side writes the requests), handing every write on before any read,
// as a capture that delivers one direction late would, and returns the
// spans.
func playWritesFirst(t *testing.T, base event.Event, turns []turn) []schemas.Span {
	t.Helper()
	s := &sink{}
	tr := newTracker(t, s)
	reqDir, respDir := event.Egress, event.Ingress
	if base.Role == event.RoleServer {
		reqDir, respDir = event.Ingress, event.Egress
	}
	var writes, reads []event.Event
	var reqSeq, respSeq uint32 = 100, 900
	for _, x := range turns {
		rq, rs := base, base
		rq.Dir, rq.EnterNs, rq.ExitNs, rq.TCPSeq, rq.Size, rq.Payload = reqDir, x.reqEnter, x.reqExit, reqSeq, int64(len(x.req)), x.req
		rs.Dir, rs.EnterNs, rs.ExitNs, rs.TCPSeq, rs.Size, rs.Payload = respDir, x.respEnter, x.respExit, respSeq, int64(len(x.resp)), x.resp
		reqSeq += uint32(len(x.req))
		respSeq += uint32(len(x.resp))
		for _, e := range []event.Event{rq, rs} {
			if e.Dir == event.Egress {
				writes = append(writes, e)
			} else {
				reads = append(reads, e)
			}
		}
	}
	for _, evs := range [][]event.Event{writes, reads} {
		for i := range evs {
			tr.Handle(&evs[i])
		}
	}
	tr.Flush()
	return s.spans
}

// The capture orders each direction of a socket but may deliver one
// direction later than the other: a server's responses can arrive before
// the requests they answer. Parsing follows causality, not arrival, so
// every request still gets its own response, even one written in the
// nanosecond its request's read returned.
func TestDirectionsMergedByCausality(t *testing.T) {
	for _, after := range []uint64{500_000, 1000} { // response write after the read's entry
		base := event.Event{PID: 5, TID: 6, Comm: "node", SockID: 9, Local: srv, Remote: cli, Role: event.RoleServer, Kind: event.KindData}
		var turns []turn
		for i := 0; i < 5; i++ {
			status := "200 OK"
			if i%2 == 1 {
				status = "201 Created"
			}
			at := uint64(1_000_000 * (i + 1))
			turns = append(turns, turn{
				req:      []byte("GET /entries/" + string(rune('0'+i)) + " HTTP/1.1\r\nHost: x\r\n\r\n"),
				resp:     []byte("HTTP/1.1 " + status + "\r\nContent-Length: 0\r\n\r\n"),
				reqEnter: at, reqExit: at + 1000, respEnter: at + after, respExit: at + after + 1000,
			})
		}
		// All responses (the server's writes) arrive first.
		spans := playWritesFirst(t, base, turns)
		if len(spans) != 5 {
			t.Fatalf("response %dns after the read's entry: %d spans, want 5", after, len(spans))
		}
		for i, sp := range spans {
			want := 200
			if i%2 == 1 {
				want = 201
			}
			if sp.Path != "/entries/"+string(rune('0'+i)) || sp.StatusCode != want || sp.Error {
				t.Fatalf("response %dns after the read's entry: span %d: %s status %d error %v, want /entries/%d with %d", after, i, sp.Path, sp.StatusCode, sp.Error, i, want)
			}
		}
	}
}

// A process the services file names only after its connection opened gets
// its service name on the spans that follow (looked up again within 5s).
func TestServiceNamedLater(t *testing.T) {
	s := &sink{}
	named := false
	tr, err := New(Config{Host: "h", Hold: 1, Wall: func(m uint64) int64 { return int64(m) }, Service: func(pid uint32, comm string) string {
		if named {
			return "catalog"
		}
		return comm
	}}, detect.Registry{}, s)
	if err != nil {
		t.Fatal(err)
	}
	first := side(event.RoleServer, 200, 2, 5000, 9000, 1)
	for i := range first[:4] {
		tr.Handle(&first[i])
	}
	named = true
	later := side(event.RoleServer, 200, 2, 5000+uint32(len(req)), 9000+uint32(len(resp)), uint64(6*time.Second))[1:]
	for i := range later {
		tr.Handle(&later[i])
	}
	if len(s.spans) != 2 || s.spans[0].Service != "svc" || s.spans[1].Service != "catalog" {
		var got []string
		for _, sp := range s.spans {
			got = append(got, sp.Service)
		}
		t.Fatalf("services %v, want [svc catalog]", got)
	}
}

// A request read in several calls is one request in flight, not one per
// call: correlation gets one RequestStart per request.
func TestOneRequestStartPerRequest(t *testing.T) {
	s := &sink{}
	tr := newTracker(t, s)
	base := event.Event{PID: 5, TID: 6, Comm: "svc", SockID: 9, Local: srv, Remote: cli, Role: event.RoleServer, Kind: event.KindData, Dir: event.Ingress}
	parts := []string{req[:10], req[10:]}
	seq := uint32(100)
	for i, p := range parts {
		e := base
		e.EnterNs, e.ExitNs, e.TCPSeq, e.Size, e.Payload = uint64(1000*(i+1)), uint64(1000*(i+1)+10), seq, int64(len(p)), []byte(p)
		seq += uint32(len(p))
		tr.Handle(&e)
	}
	w := base
	w.Dir, w.EnterNs, w.ExitNs, w.TCPSeq, w.Size, w.Payload = event.Egress, 5000, 5010, 900, int64(len(resp)), []byte(resp)
	tr.Handle(&w)
	tr.Flush()
	if len(s.spans) != 1 || len(s.inflight) != 1 || s.inflight[0].SpanID != s.spans[0].SpanID {
		t.Fatalf("%d spans, in-flight %+v; want one of each with the same id", len(s.spans), s.inflight)
	}
}

// Oldest reports the start of a request not answered yet, and nothing once
// it is; a connection speaking an unknown protocol, whose exchanges are
// emitted only at the next request, never holds it.
func TestOldestHeldExchange(t *testing.T) {
	s := &sink{}
	tr := newTracker(t, s)
	evs := side(event.RoleServer, 100, 1, 5000, 9000, 0)
	tr.Handle(&evs[0])
	tr.Handle(&evs[1]) // the request is read
	tr.Expire(uint64(time.Second))
	start := int64(110) + 1e18 // the read returned at 110
	if o, ok := tr.Oldest(0); !ok || o != start {
		t.Fatalf("Oldest with a request open = %d %v, want %d", o, ok, start)
	}
	if _, ok := tr.Oldest(start + 1); ok {
		t.Fatal("a request older than the cutoff still counted")
	}
	tr.Handle(&evs[2])
	tr.Handle(&evs[3]) // answered
	tr.Expire(uint64(2 * time.Second))
	if o, ok := tr.Oldest(0); ok || len(s.spans) != 1 {
		t.Fatalf("after the answer: Oldest = %d %v, %d spans", o, ok, len(s.spans))
	}

	// Unknown bytes both ways, then silence.
	base := event.Event{PID: 200, TID: 201, Comm: "tls", SockID: 2, Local: srv, Remote: cli, Role: event.RoleServer}
	at := uint64(3 * time.Second)
	for i, d := range []event.Direction{event.Ingress, event.Egress} {
		e := base
		e.Kind, e.Dir, e.EnterNs, e.ExitNs, e.TCPSeq = event.KindData, d, at+uint64(i)*1000, at+uint64(i)*1000+10, 77
		e.Payload = []byte{0x17, 0x03, 0x03, 0x00, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
		e.Size = int64(len(e.Payload))
		tr.Handle(&e)
	}
	tr.Expire(at + uint64(time.Second))
	if o, ok := tr.Oldest(0); ok {
		t.Fatalf("an idle unknown-protocol connection holds the progress at %d", o)
	}
}

// A blocking read waits in the kernel before its data comes: the server's
// read of a keep-alive connection between requests, a client's read of a
// slow answer. The request starts, and the response arrives, when the read
// returns, not when it was entered.
func TestBlockingReadsStartWhenTheyReturn(t *testing.T) {
	for _, role := range []event.Role{event.RoleServer, event.RoleClient} {
		s := &sink{}
		tr := newTracker(t, s)
		evs := side(role, 100, 1, 5000, 9000, 10e9)
		// Each side's reads block for 5s: the server's request read, the
		// client's response read.
		for i := range evs {
			if evs[i].Kind == event.KindData && evs[i].Dir == event.Ingress {
				evs[i].EnterNs -= 5e9
			}
		}
		for i := range evs {
			tr.Handle(&evs[i])
		}
		tr.Flush()
		if len(s.spans) != 1 {
			t.Fatalf("%s: %d spans, want 1", role, len(s.spans))
		}
		sp, wall := s.spans[0], func(m uint64) int64 { return int64(m) + 1e18 }
		want := wall(evs[1].EnterNs) // a client's request write starts when made
		if role == event.RoleServer {
			want = wall(evs[1].ExitNs)
		}
		if sp.StartNs != want || sp.EndNs != wall(evs[3].ExitNs) {
			t.Fatalf("%s span [%d, %d], want [%d, %d]", role, sp.StartNs, sp.EndNs, want, wall(evs[3].ExitNs))
		}
	}
}

// On a client, a tie between a request's write (its entry) and a read
// (its return) puts the request first (see release): with a request and
// its own answer at one key, each request keeps its own answer, also where
// turn-taking (an unknown protocol) is all that pairs them.
func TestClientRequestAndAnswerInTheSameNanosecond(t *testing.T) {
	base := event.Event{PID: 5, TID: 6, Comm: "cli", SockID: 9, Local: cli, Remote: srv, Role: event.RoleClient, Kind: event.KindData}
	var turns []turn
	for i := 0; i < 4; i++ {
		at := uint64(1_000_000 * (i + 1))
		turns = append(turns, turn{req: bytes.Repeat([]byte{0xa0}, 10+i), resp: bytes.Repeat([]byte{0xb0}, 20+i),
			reqEnter: at, reqExit: at + 1000, respEnter: at - 500, respExit: at})
	}
	spans := playWritesFirst(t, base, turns)
	if len(spans) != 4 {
		t.Fatalf("%d spans, want 4", len(spans))
	}
	for i, sp := range spans {
		if sp.ReqBytes != int64(10+i) || sp.RespBytes != int64(20+i) {
			t.Fatalf("span %d: %d request bytes answered by %d, want %d by %d", i, sp.ReqBytes, sp.RespBytes, 10+i, 20+i)
		}
	}
}
