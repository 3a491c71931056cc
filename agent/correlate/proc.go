package correlate

import (
	"sort"

	"github.com/deeptrace/deeptrace/agent/conntrack"
	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/schemas"
)

// server is a request of the process: from its server span, or only from
// conntrack's in-flight report while its response has not been seen.
type server struct {
	id       string
	seq      uint64 // the exchange's number on its connection
	start    int64  // first read of the request
	reqEnd   int64  // last read of the request
	respAt   int64  // first write of the response; 0 while in flight
	end      int64
	tid      uint32 // thread that read the request's first bytes
	respTID  uint32 // thread that wrote the response's first bytes
	goid     uint64
	respGoID uint64
	op       string
	tokens   []string // the request's own ids
	adopted  []string // ids its confidently placed calls carried
	lent     int      // calls that lent ids
	done     bool     // the server span was seen
	// children counts decided calls by operation; calls are the decided
	// calls in start order (for the event-loop state).
	children map[string]int
	calls    []*client
}

// contains says whether the request was in progress at t: read and not
// yet answered.
func (s *server) contains(t int64) bool {
	return s.start <= t && (s.respAt == 0 || t <= s.respAt)
}

// client is a call of the process waiting for, or given, its parent.
type client struct {
	span      schemas.Span
	reqStart  int64
	reqEnd    int64
	respAt    int64
	endNs     int64
	tid       uint32
	respTID   uint32
	goid      uint64
	respGoID  uint64
	op        string
	tokens    []string
	parent    *server
	conf      float64
	decided   bool
	confident bool // an anchor or a high-confidence decision

	noCandidate bool
}

// Mark kinds on a thread's timeline.
const (
	markReqRead   = iota + 1 // a server read a request's first bytes
	markRespWrite            // a server wrote a response's first bytes
	markCallWrite            // a call's request was written
	markCallRead             // a call's response was read
	markGoCreate             // goroutine g created child
	markGoRun                // goroutine g started running
)

// mark is one execution-context fact on a thread.
type mark struct {
	t     int64
	kind  uint8
	g     uint64 // goroutine doing it (0 when unknown)
	child uint64 // markGoCreate: the new goroutine
	srv   *server
	cli   *client
}

type timeline struct {
	marks []mark // by time
}

func (tl *timeline) add(m mark) {
	i := len(tl.marks)
	for i > 0 && tl.marks[i-1].t > m.t {
		i--
	}
	if i == len(tl.marks) {
		tl.marks = append(tl.marks, m)
		return
	}
	tl.marks = append(tl.marks, mark{})
	copy(tl.marks[i+1:], tl.marks[i:])
	tl.marks[i] = m
}

// before returns the index of the first mark at or after t.
func (tl *timeline) before(t int64) int {
	return sort.Search(len(tl.marks), func(i int) bool { return tl.marks[i].t >= t })
}

// goroutine is what the runtime probes and the data events say of one
// goroutine.
type goroutine struct {
	parent  uint64
	created int64
	// reqs are the requests whose first bytes this goroutine read, by
	// time: it served them (net/http's conn goroutine) or dispatched
	// them (grpc-go's reader).
	reqs []*server
	// creations are the times this goroutine created others, for the
	// k-th-creation-after-a-read rule of dispatching readers.
	creations []int64
	last      int64
}

// proc is one process's state.
type proc struct {
	pid     uint32
	cfg     Config
	servers []*server // by start
	byID    map[string]*server
	threads map[uint32]*timeline
	gor     map[uint64]*goroutine
	// responses are the finished requests by response time, waiting to
	// serve as anchors (learnFromResponses).
	responses []*server
	// longest is the longest request seen (read to response), bounded
	// by Retain: how far back a request in progress can have started.
	longest  int64
	lastNs   int64
	pendingN int
	model    model
	explain  func(Explanation)
}

func newProc(pid uint32, cfg Config) *proc {
	return &proc{pid: pid, cfg: cfg, byID: map[string]*server{}, threads: map[uint32]*timeline{}, gor: map[uint64]*goroutine{}, model: newModel(), explain: cfg.Explain}
}

func (p *proc) thread(tid uint32) *timeline {
	tl := p.threads[tid]
	if tl == nil {
		tl = &timeline{}
		p.threads[tid] = tl
	}
	return tl
}

func (p *proc) goroutine(g uint64) *goroutine {
	if g == 0 {
		return nil
	}
	gr := p.gor[g]
	if gr == nil {
		gr = &goroutine{}
		p.gor[g] = gr
	}
	return gr
}

func (p *proc) insertServer(s *server) {
	i := sort.Search(len(p.servers), func(i int) bool {
		o := p.servers[i]
		return o.start > s.start || o.start == s.start && o.id > s.id
	})
	p.servers = append(p.servers, nil)
	copy(p.servers[i+1:], p.servers[i:])
	p.servers[i] = s
}

// addHint records a request known only from its first read.
func (p *proc) addHint(r conntrack.InFlight) {
	if r.StartNs > p.lastNs {
		p.lastNs = r.StartNs
	}
	if p.byID[r.SpanID] != nil {
		return
	}
	s := &server{id: r.SpanID, start: r.StartNs, reqEnd: r.StartNs, tid: r.TID, goid: r.GoID}
	p.byID[s.id] = s
	p.insertServer(s)
}

// unresolved says whether a request known only from its in-flight report
// was in progress at t: its content and threads are not known yet.
func (p *proc) unresolved(t, maxWait int64) bool {
	i := sort.Search(len(p.servers), func(i int) bool { return p.servers[i].start > t })
	for j := i - 1; j >= 0; j-- {
		s := p.servers[j]
		if s.start < t-maxWait {
			break
		}
		if !s.done {
			return true
		}
	}
	return false
}

func (p *proc) addServer(sp *schemas.Span, ex *protocol.Exchange) {
	if sp.EndNs > p.lastNs {
		p.lastNs = sp.EndNs
	}
	s := p.byID[sp.SpanID]
	if s == nil {
		s = &server{id: sp.SpanID}
		p.byID[s.id] = s
	} else {
		p.removeServer(s)
	}
	s.start, s.end, s.done = ex.ReqStartNs, sp.EndNs, true
	s.reqEnd, s.respAt = ex.ReqEndNs, ex.RespStartNs
	if ex.NoResponse || s.respAt == 0 {
		s.respAt = s.end
	}
	s.tid, s.respTID, s.goid, s.respGoID = ex.ReqTID, ex.RespTID, ex.ReqGoID, ex.RespGoID
	s.op, s.seq = sp.Operation, sp.Seq
	if d := min(s.respAt-s.start, int64(p.cfg.Retain)); d > p.longest {
		p.longest = d
	}
	if !p.cfg.IgnoreValues {
		s.tokens = tokens(ex.Values, s.tokens)
	}
	p.insertServer(s)
	if s.respAt > 0 && s.respAt < s.end+1 {
		i := len(p.responses)
		for i > 0 && p.responses[i-1].respAt > s.respAt {
			i--
		}
		p.responses = append(p.responses, nil)
		copy(p.responses[i+1:], p.responses[i:])
		p.responses[i] = s
		if len(p.responses) > p.cfg.MaxPerProcess {
			p.responses = p.responses[1:]
		}
	}
	// Hints of the same request (its later chunks, or an HTTP/2 chunk
	// that carried several requests) are not requests of their own.
	for i := len(p.servers) - 1; i >= 0; i-- {
		h := p.servers[i]
		if h.start < s.start {
			break
		}
		if !h.done && h.start <= s.reqEnd && h.tid == s.tid {
			p.removeServer(h)
			delete(p.byID, h.id)
		}
	}
	p.thread(s.tid).add(mark{t: s.start, kind: markReqRead, g: s.goid, srv: s})
	if s.respTID != 0 && ex.RespStartNs != 0 {
		p.thread(s.respTID).add(mark{t: ex.RespStartNs, kind: markRespWrite, g: s.respGoID, srv: s})
	}
	if g := p.goroutine(s.goid); g != nil {
		p.bindGoroutine(g, s)
		// net/http reads a connection's next request on a goroutine the
		// conn's goroutine started for the previous one (background
		// read); the conn's goroutine serves it.
		if pg := p.gor[g.parent]; pg != nil && len(pg.reqs) > 0 && g.created > pg.reqs[0].start {
			p.bindGoroutine(pg, s)
		}
	}
}

func (p *proc) bindGoroutine(g *goroutine, s *server) {
	for _, r := range g.reqs {
		if r == s {
			return
		}
	}
	i := len(g.reqs)
	for i > 0 && (g.reqs[i-1].start > s.start || g.reqs[i-1].start == s.start && g.reqs[i-1].seq > s.seq) {
		i--
	}
	g.reqs = append(g.reqs, nil)
	copy(g.reqs[i+1:], g.reqs[i:])
	g.reqs[i] = s
	if s.start > g.last {
		g.last = s.start
	}
}

func (p *proc) removeServer(s *server) {
	i := sort.Search(len(p.servers), func(i int) bool {
		o := p.servers[i]
		return o.start > s.start || o.start == s.start && o.id >= s.id
	})
	for ; i < len(p.servers) && p.servers[i].start == s.start; i++ {
		if p.servers[i] == s {
			p.servers = append(p.servers[:i], p.servers[i+1:]...)
			return
		}
	}
}

func (p *proc) addClient(sp *schemas.Span, ex *protocol.Exchange) *client {
	if sp.EndNs > p.lastNs {
		p.lastNs = sp.EndNs
	}
	c := &client{
		span: *sp, reqStart: ex.ReqStartNs, reqEnd: ex.ReqEndNs, respAt: ex.RespStartNs, endNs: sp.EndNs,
		tid: ex.ReqTID, respTID: ex.RespTID, goid: ex.ReqGoID, respGoID: ex.RespGoID, op: sp.Operation,
	}
	if c.reqStart == 0 {
		c.reqStart = sp.StartNs
	}
	if !p.cfg.IgnoreValues {
		c.tokens = tokens(ex.Values, nil)
	}
	p.thread(c.tid).add(mark{t: c.reqStart, kind: markCallWrite, g: c.goid, cli: c})
	if c.respAt != 0 && c.respTID != 0 {
		p.thread(c.respTID).add(mark{t: c.respAt, kind: markCallRead, g: c.respGoID, cli: c})
	}
	for _, g := range []uint64{c.goid, c.respGoID} {
		if gr := p.goroutine(g); gr != nil {
			if c.endNs > gr.last {
				gr.last = c.endNs
			}
		}
	}
	return c
}

func (p *proc) addGo(ev event.GoEvent) {
	p.model.goroutines = true
	t := int64(ev.Ns)
	if t > p.lastNs {
		p.lastNs = t
	}
	switch ev.Kind {
	case event.GoCreate:
		g := p.goroutine(ev.GoID)
		if g == nil {
			return
		}
		g.parent, g.created, g.last = ev.ParentGoID, t, t
		if pg := p.goroutine(ev.ParentGoID); pg != nil {
			pg.creations = append(pg.creations, t)
			if len(pg.creations) > 64 {
				pg.creations = append(pg.creations[:0], pg.creations[len(pg.creations)-32:]...)
			}
			pg.last = max(pg.last, t)
		}
		p.thread(ev.TID).add(mark{t: t, kind: markGoCreate, g: ev.ParentGoID, child: ev.GoID})
	case event.GoRunning:
		if g := p.goroutine(ev.GoID); g != nil {
			g.last = max(g.last, t)
		}
		p.thread(ev.TID).add(mark{t: t, kind: markGoRun, g: ev.GoID})
	}
}

// prune forgets what ended before horizon, and enforces the bounds.
func (p *proc) prune(horizon int64, st *Stats) {
	keep := p.servers[:0]
	for _, s := range p.servers {
		ended := s.done && s.end < horizon || !s.done && s.start < horizon-int64(p.cfg.Retain)
		if ended {
			delete(p.byID, s.id)
			if s.done {
				p.model.learnCounts(s)
			}
			continue
		}
		keep = append(keep, s)
	}
	for i := len(keep); i < len(p.servers); i++ {
		p.servers[i] = nil
	}
	p.servers = keep
	if over := len(p.servers) - p.cfg.MaxPerProcess; over > 0 {
		for _, s := range p.servers[:over] {
			delete(p.byID, s.id)
		}
		p.servers = append(p.servers[:0], p.servers[over:]...)
		st.DroppedServers += uint64(over)
	}
	for tid, tl := range p.threads {
		i := tl.before(horizon)
		if over := len(tl.marks) - i - p.cfg.MaxPerProcess; over > 0 {
			i += over
			st.DroppedMarks += uint64(over)
		}
		if i > 0 {
			tl.marks = append(tl.marks[:0], tl.marks[i:]...)
		}
		if len(tl.marks) == 0 {
			delete(p.threads, tid)
		}
	}
	for id, g := range p.gor {
		if g.last < horizon {
			delete(p.gor, id)
		}
	}
	if over := len(p.gor) - p.cfg.MaxPerProcess; over > 0 {
		// Forget the goroutines idle longest (deterministically).
		ids := make([]uint64, 0, len(p.gor))
		for id := range p.gor {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool {
			a, b := p.gor[ids[i]], p.gor[ids[j]]
			return a.last < b.last || a.last == b.last && ids[i] < ids[j]
		})
		for _, id := range ids[:over] {
			delete(p.gor, id)
		}
		st.DroppedGoroutines += uint64(over)
	}
	for _, s := range p.servers {
		if len(s.calls) > 64 {
			s.calls = s.calls[len(s.calls)-64:]
		}
	}
}
