package correlate

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/agent/conntrack"
	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/agent/pipeline"
	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/schemas"
)

// The scenarios below are small synthetic recordings of one process, in the
// shape each runtime gives them to the agent: which thread or goroutine
// read a request, wrote a call, read its answer, wrote the response. Times
// are in microseconds from an arbitrary origin.

const pid = 4242

const us = int64(time.Microsecond)

// item is one thing the correlator receives, at the time it would.
type item struct {
	at   int64
	feed func(c *Correlator)
}

type scenario struct {
	items []item
	// want maps a call to its true parent ("" for none).
	want map[string]string
}

func newScenario() *scenario { return &scenario{want: map[string]string{}} }

type side struct {
	tid uint32
	g   uint64
	at  int64 // µs
}

// request adds a server span: request read by rd, response written by wr.
func (s *scenario) request(id string, rd, wr side, op string, values ...string) {
	ex := &protocol.Exchange{
		ReqStartNs: rd.at * us, ReqEndNs: rd.at*us + us, RespStartNs: wr.at * us, RespEndNs: wr.at*us + us,
		ReqTID: rd.tid, ReqGoID: rd.g, RespTID: wr.tid, RespGoID: wr.g, Operation: op, Values: values,
	}
	sp := schemas.Span{SpanID: id, Role: schemas.RoleServer, Operation: op, PID: pid, TID: rd.tid, GoID: rd.g,
		StartNs: ex.ReqStartNs, EndNs: ex.RespEndNs}
	s.items = append(s.items,
		item{rd.at * us, func(c *Correlator) {
			c.RequestStart(conntrack.InFlight{SpanID: id, PID: pid, TID: rd.tid, GoID: rd.g, StartNs: rd.at * us})
		}},
		item{ex.RespEndNs, func(c *Correlator) { c.Span(sp, ex) }})
}

// call adds a client span: request written by wr, answer read by rd; parent
// is the truth.
func (s *scenario) call(id, parent string, wr, rd side, op string, values ...string) {
	ex := &protocol.Exchange{
		ReqStartNs: wr.at * us, ReqEndNs: wr.at*us + us, RespStartNs: rd.at * us, RespEndNs: rd.at*us + us,
		ReqTID: wr.tid, ReqGoID: wr.g, RespTID: rd.tid, RespGoID: rd.g, Operation: op, Values: values,
	}
	sp := schemas.Span{SpanID: id, Role: schemas.RoleClient, Operation: op, PID: pid, TID: wr.tid, GoID: wr.g,
		StartNs: ex.ReqStartNs, EndNs: ex.RespEndNs}
	s.want[id] = parent
	s.items = append(s.items, item{ex.RespEndNs, func(c *Correlator) { c.Span(sp, ex) }})
}

// gocreate adds a goroutine creation seen on thread tid.
func (s *scenario) gocreate(parent, child uint64, tid uint32, at int64) {
	g := event.GoEvent{Kind: event.GoCreate, Ns: uint64(at * us), PID: pid, TID: tid, GoID: child, ParentGoID: parent}
	s.items = append(s.items, item{at * us, func(c *Correlator) { c.GoEvent(g) }})
}

// run feeds the scenario in arrival order and returns each call's parent.
func (s *scenario) run(t *testing.T, cfg Config) map[string]schemas.Span {
	t.Helper()
	out := map[string]schemas.Span{}
	c, err := New(cfg, func(sp schemas.Span) {
		if _, dup := out[sp.SpanID]; dup {
			t.Fatalf("span %s passed on twice", sp.SpanID)
		}
		out[sp.SpanID] = sp
	})
	if err != nil {
		t.Fatal(err)
	}
	items := append([]item(nil), s.items...)
	sort.SliceStable(items, func(i, j int) bool { return items[i].at < items[j].at })
	for _, it := range items {
		it.feed(c)
		c.Advance(it.at)
	}
	c.Flush()
	if st := c.Stats(); st.Pending != 0 {
		t.Fatalf("%d calls still pending after Flush", st.Pending)
	}
	return out
}

// score counts the calls given their true parent.
func (s *scenario) score(out map[string]schemas.Span) (right int, wrong []string) {
	ids := make([]string, 0, len(s.want))
	for id := range s.want {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if out[id].ParentSpanID == s.want[id] {
			right++
		} else {
			wrong = append(wrong, fmt.Sprintf("%s: got %q want %q", id, out[id].ParentSpanID, s.want[id]))
		}
	}
	return right, wrong
}

func expect(t *testing.T, s *scenario, m Method, minRight int) {
	t.Helper()
	right, wrong := s.score(s.run(t, Config{Method: m}))
	if right < minRight {
		t.Errorf("%s: %d of %d calls right, want at least %d; wrong: %v", m, right, len(s.want), minRight, wrong)
	}
}

func expectAtMost(t *testing.T, s *scenario, m Method, maxRight int) {
	t.Helper()
	right, _ := s.score(s.run(t, Config{Method: m}))
	if right > maxRight {
		t.Errorf("%s: %d of %d calls right; the scenario should defeat it (at most %d)", m, right, len(s.want), maxRight)
	}
}

// A thread per request (Java servlet, Python threaded WSGI): the thread that
// read the request makes its calls and writes its response.
func TestThreadPerRequest(t *testing.T) {
	s := newScenario()
	for i := 0; i < 20; i++ {
		base := int64(i) * 100
		t1, t2 := uint32(11), uint32(12)
		s.request(fmt.Sprint("a", i), side{t1, 0, base}, side{t1, 0, base + 60}, "GET /a")
		s.request(fmt.Sprint("b", i), side{t2, 0, base + 10}, side{t2, 0, base + 70}, "GET /b")
		s.call(fmt.Sprint("ca", i), fmt.Sprint("a", i), side{t1, 0, base + 20}, side{t1, 0, base + 40}, "GET /x")
		s.call(fmt.Sprint("cb", i), fmt.Sprint("b", i), side{t2, 0, base + 25}, side{t2, 0, base + 45}, "GET /y")
	}
	expect(t, s, Ours, 40)
	expect(t, s, Thread, 40)
	expectAtMost(t, s, FIFO, 20)
}

// waitress: the main thread reads every request and hands it to a worker
// thread, which makes the calls and writes the response.
func TestWorkerThreads(t *testing.T) {
	s := newScenario()
	main, w1, w2 := uint32(1), uint32(21), uint32(22)
	for i := 0; i < 20; i++ {
		base := int64(i) * 100
		s.request(fmt.Sprint("a", i), side{main, 0, base}, side{w1, 0, base + 60}, "GET /a")
		s.request(fmt.Sprint("b", i), side{main, 0, base + 5}, side{w2, 0, base + 50}, "GET /b")
		s.call(fmt.Sprint("ca", i), fmt.Sprint("a", i), side{w1, 0, base + 10}, side{w1, 0, base + 30}, "GET /x")
		s.call(fmt.Sprint("cb", i), fmt.Sprint("b", i), side{w2, 0, base + 12}, side{w2, 0, base + 32}, "GET /y")
	}
	expect(t, s, Ours, 40)
	expectAtMost(t, s, Thread, 0)
	expectAtMost(t, s, FIFO, 20)
}

// Node.js: one thread; a callback runs right after the read that woke it,
// so the latest read before a write names the request (DeepFlow's
// syscall-trace-id idea), whether it read a request or a call's answer.
func TestEventLoopImmediate(t *testing.T) {
	s := newScenario()
	e := uint32(7)
	for i := 0; i < 20; i++ {
		b := int64(i) * 100
		s.request(fmt.Sprint("a", i), side{e, 0, b}, side{e, 0, b + 41}, "GET /a")
		s.call(fmt.Sprint("ca1.", i), fmt.Sprint("a", i), side{e, 0, b + 1}, side{e, 0, b + 20}, "GET")
		s.request(fmt.Sprint("b", i), side{e, 0, b + 5}, side{e, 0, b + 31}, "GET /b")
		s.call(fmt.Sprint("cb1.", i), fmt.Sprint("b", i), side{e, 0, b + 6}, side{e, 0, b + 30}, "GET")
		// a's handler resumes on its answer and makes a second call.
		s.call(fmt.Sprint("ca2.", i), fmt.Sprint("a", i), side{e, 0, b + 21}, side{e, 0, b + 40}, "SET")
	}
	expect(t, s, Ours, 60)
	expectAtMost(t, s, Thread, 40)
	expectAtMost(t, s, FIFO, 40)
}

// asyncio: reads of one loop iteration come first, the tasks they woke run
// in the next iteration in the order they were woken. The latest read is
// then the wrong answer; the process must learn it from the calls whose
// ids name their request, and switch to the order of waking.
func TestEventLoopFIFOLearnt(t *testing.T) {
	s := newScenario()
	e := uint32(9)
	n := 0
	for i := 0; i < 120; i++ {
		b := int64(i) * 100
		// Three requests read in one iteration, their first calls
		// written in the next, in the same order.
		for k := 0; k < 3; k++ {
			id := fmt.Sprintf("r%d.%d", i, k)
			s.request(id, side{e, 0, b + int64(k)}, side{e, 0, b + 60 + int64(k)}, "GET /orders/{id}", fmt.Sprint(100000+3*i+k))
			var vals []string
			if i < 60 { // the first half carry the order id: anchors
				vals = []string{fmt.Sprintf("order:%d", 100000+3*i+k)}
			}
			s.call("c"+id, id, side{e, 0, b + 10 + int64(k)}, side{e, 0, b + 40 + int64(k)}, "GET", vals...)
			n++
		}
	}
	out := s.run(t, Config{Method: Ours})
	right := 0
	for i := 60; i < 120; i++ {
		for k := 0; k < 3; k++ {
			id := fmt.Sprintf("r%d.%d", i, k)
			if out["c"+id].ParentSpanID == id {
				right++
			}
		}
	}
	if right < 170 {
		t.Errorf("ours: %d of 180 calls without ids right after learning from the anchored ones, want >= 170", right)
	}
	expectAtMost(t, s, FIFO, n/3+5)
}

// grpc-go server and pgx: the connection's reader goroutine reads the
// requests (several in one read) and starts one goroutine per request, in
// order; that goroutine writes the SQL.
func TestGoroutineLineage(t *testing.T) {
	s := newScenario()
	reader := uint64(10)
	for i := 0; i < 20; i++ {
		b := int64(i) * 100
		a, bb := fmt.Sprint("a", i), fmt.Sprint("b", i)
		ga, gb := uint64(1000+2*i), uint64(1001+2*i)
		// One read carries both requests; both responses go out late.
		s.request(a, side{3, reader, b}, side{4, 50, b + 80}, "/inv.Inventory/Reserve")
		s.request(bb, side{3, reader, b}, side{4, 50, b + 81}, "/inv.Inventory/Reserve")
		s.gocreate(reader, ga, 3, b+1)
		s.gocreate(reader, gb, 3, b+2)
		// b's goroutine happens to write first, on another thread.
		s.call("cb"+fmt.Sprint(i), bb, side{5, gb, b + 10}, side{5, gb, b + 20}, "SELECT stock")
		s.call("ca"+fmt.Sprint(i), a, side{6, ga, b + 12}, side{6, ga, b + 22}, "SELECT stock")
		s.call("ca2"+fmt.Sprint(i), a, side{6, ga, b + 30}, side{6, ga, b + 40}, "INSERT reservations")
	}
	// Requests with the same start need the seq order: give it.
	for i := range s.items {
		_ = i
	}
	expect(t, s, Ours, 60)
	expectAtMost(t, s, FIFO, 40)
}

// net/http client: the call is written by the connection's writeLoop
// goroutine, not the handler's; what ties it to the request is the thread
// it ran on right after the handler's goroutine started its workers.
func TestGoClientThreadContext(t *testing.T) {
	s := newScenario()
	for i := 0; i < 20; i++ {
		b := int64(i) * 100
		a, bb := fmt.Sprint("a", i), fmt.Sprint("b", i)
		gsA, gsB := uint64(20), uint64(21) // conn goroutines
		s.request(a, side{1, gsA, b}, side{1, gsA, b + 60}, "GET /api/orders/{id}")
		s.request(bb, side{2, gsB, b + 3}, side{2, gsB, b + 62}, "GET /api/orders/{id}")
		s.gocreate(gsA, uint64(500+2*i), 1, b+1)
		s.gocreate(gsB, uint64(501+2*i), 2, b+4)
		// writeLoop goroutines 300/301, started long ago by a dialer.
		s.call("ca"+fmt.Sprint(i), a, side{1, 300, b + 8}, side{2, 310, b + 30}, "GET /items/{id}")
		s.call("cb"+fmt.Sprint(i), bb, side{2, 301, b + 9}, side{1, 311, b + 31}, "GET /items/{id}")
	}
	expect(t, s, Ours, 40)
	expectAtMost(t, s, FIFO, 20)
}

// Shared ids outweigh timing: the latest request is not the parent.
func TestValuesOutweighTiming(t *testing.T) {
	s := newScenario()
	e := uint32(5)
	for i := 0; i < 10; i++ {
		b := int64(i) * 100
		s.request(fmt.Sprint("x", i), side{e, 0, b}, side{e, 0, b + 50}, "GET /orders/{id}", fmt.Sprint(5000+i))
		s.request(fmt.Sprint("y", i), side{e, 0, b + 2}, side{e, 0, b + 51}, "GET /orders/{id}", fmt.Sprint(7000+i))
		s.call(fmt.Sprint("c", i), fmt.Sprint("x", i), side{e, 0, b + 4}, side{e, 0, b + 20}, "GET", fmt.Sprintf("payment:%d", 5000+i))
	}
	expect(t, s, Ours, 10)
	expectAtMost(t, s, FIFO, 0)
}

// A call whose request is still in flight when the call ends waits for it
// (the request's content is known only when its span comes), up to MaxWait.
func TestWaitsForRequestsInFlight(t *testing.T) {
	s := newScenario()
	e := uint32(5)
	// x is long: its span arrives 800ms after the call ended.
	s.request("x", side{e, 0, 0}, side{e, 0, 800_000}, "POST /api/checkout", "31337")
	s.request("y", side{e, 0, 2}, side{e, 0, 30}, "GET /api/search")
	s.call("c", "x", side{e, 0, 4}, side{e, 0, 20}, "/inv.Inventory/Reserve", "31337")
	expect(t, s, Ours, 1)
	// With a MaxWait below the request's duration, the call is decided
	// without x's content.
	out := s.run(t, Config{Method: Ours, Delay: 10 * time.Millisecond, MaxWait: 20 * time.Millisecond})
	if out["c"].ParentSpanID == "" {
		t.Errorf("call with MaxWait exceeded got no parent")
	}
}

func TestNoCandidate(t *testing.T) {
	s := newScenario()
	s.request("x", side{1, 0, 100}, side{1, 0, 200}, "GET /a")
	s.call("c", "", side{1, 0, 10}, side{1, 0, 20}, "GET /b") // before any request
	for _, m := range Methods {
		expect(t, s, m, 1)
	}
}

func TestDeterministic(t *testing.T) {
	s := newScenario()
	e := uint32(9)
	for i := 0; i < 50; i++ {
		b := int64(i) * 10
		s.request(fmt.Sprint("r", i), side{e, 0, b}, side{e, 0, b + 35}, "GET /r")
		s.call(fmt.Sprint("c", i), fmt.Sprint("r", i), side{e, 0, b + 3}, side{e, 0, b + 30}, "GET")
	}
	a := s.run(t, Config{Method: Ours})
	for k := 0; k < 3; k++ {
		b := s.run(t, Config{Method: Ours})
		for id, sp := range a {
			if b[id].ParentSpanID != sp.ParentSpanID || b[id].ParentConfidence != sp.ParentConfidence {
				t.Fatalf("run %d: %s got %s/%v, first run %s/%v", k, id, b[id].ParentSpanID, b[id].ParentConfidence, sp.ParentSpanID, sp.ParentConfidence)
			}
		}
	}
	for id, sp := range a {
		if sp.Role == schemas.RoleClient && (sp.ParentConfidence < 0 || sp.ParentConfidence > 1) {
			t.Errorf("%s: confidence %v outside [0,1]", id, sp.ParentConfidence)
		}
	}
}

func TestBoundedPending(t *testing.T) {
	s := newScenario()
	for i := 0; i < 10; i++ {
		s.request(fmt.Sprint("r", i), side{1, 0, int64(i) * 10}, side{1, 0, int64(i)*10 + 8}, "GET /r")
		s.call(fmt.Sprint("c", i), fmt.Sprint("r", i), side{1, 0, int64(i)*10 + 2}, side{1, 0, int64(i)*10 + 5}, "GET")
	}
	var c *Correlator
	n := 0
	c, _ = New(Config{MaxPending: 2}, func(schemas.Span) { n++ })
	items := append([]item(nil), s.items...)
	sort.SliceStable(items, func(i, j int) bool { return items[i].at < items[j].at })
	for _, it := range items {
		it.feed(c) // no Advance: only the bound makes decisions
	}
	if st := c.Stats(); st.Pending > 2 || st.Early == 0 {
		t.Errorf("pending %d early %d: the bound of 2 was not kept", st.Pending, st.Early)
	}
	c.Flush()
	if n != 20 {
		t.Errorf("%d spans passed on, want 20", n)
	}
}

func TestParseMethod(t *testing.T) {
	for _, m := range Methods {
		if got, err := ParseMethod(string(m)); err != nil || got != m {
			t.Errorf("ParseMethod(%q) = %q, %v", m, got, err)
		}
	}
	if _, err := ParseMethod("magic"); err == nil {
		t.Error("ParseMethod accepted an unknown method")
	}
	if _, err := New(Config{Method: "magic"}, func(schemas.Span) {}); err == nil {
		t.Error("New accepted an unknown method")
	}
	if _, err := New(Config{}, nil); err == nil {
		t.Error("New accepted a nil output")
	}
}

func TestTokens(t *testing.T) {
	got := tokens([]string{"item:123", "/items/123", "name,price", "eu-1", "x", "SELECT 7"}, nil)
	want := []string{"item", "123", "items", "name", "price", "eu-1", "SELECT"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("tokens = %v, want %v", got, want)
	}
}

// The correlator is what agent/pipeline plugs between conntrack and the
// output.
var _ pipeline.Correlator = (*Correlator)(nil)
