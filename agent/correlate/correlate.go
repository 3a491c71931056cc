// Package correlate is local correlation: inside one process, it decides
// which incoming request (server span) each outgoing call (client span)
// serves, and sets the client span's ParentSpanID and ParentConfidence.
//
// It sits between conntrack and the writer: it implements conntrack.Sink,
// takes goroutine events from the Go runtime probes, and passes every span
// on once decided. It is streaming and bounded: per-process tables of
// requests, calls and execution-context marks that are pruned as time
// passes, a decision delay after a call ends (so the requests and the other
// calls around it are known), and drop counters where a bound is hit. Given
// the same input in the same order it makes the same decisions.
//
// Three methods are selectable, so that the gain is measured: "ours" (see
// docs/correlation.md), and two baselines, "thread" (the latest request
// read on the call's thread) and "fifo" (the most recent request of the
// process that contains the call in time).
package correlate

import (
	"fmt"
	"time"

	"github.com/deeptrace/deeptrace/agent/conntrack"
	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/schemas"
)

// Method names a correlation method.
type Method string

// The methods.
const (
	// Ours combines execution context (thread, goroutine lineage, event
	// loop order), causality in time and shared content, with weights
	// learnt per process from the calls it can decide unambiguously.
	Ours Method = "ours"
	// Thread takes the most recent request, containing the call, that was
	// read on the thread that wrote the call.
	Thread Method = "thread"
	// FIFO takes the most recent request of the process that contains the
	// call in time.
	FIFO Method = "fifo"
)

// Methods lists the selectable methods.
var Methods = []Method{Ours, Thread, FIFO}

// ParseMethod checks a method name.
func ParseMethod(s string) (Method, error) {
	for _, m := range Methods {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("correlate: unknown method %q (want one of %v)", s, Methods)
}

// Config tunes a Correlator. The zero value (with an Output) uses Ours and
// the defaults below.
type Config struct {
	Method Method
	// Delay is how long after a call's end (in event time) its parent is
	// decided: the requests and calls around it must have reached the
	// correlator by then (default 2s: capture was measured handing a new
	// connection's first events on up to 0.9s late under load).
	Delay time.Duration
	// MaxWait bounds how long past its end a call waits for the requests
	// that were in progress when it was made (known only from conntrack's
	// in-flight report) to finish, so that their content counts (default
	// 5s). A request still unfinished then is taken for a stray report.
	MaxWait time.Duration
	// Retain is how long requests, calls and marks are kept after they
	// end, as candidates and context (default 10s, at least 2×MaxWait).
	Retain time.Duration
	// MaxPending bounds the calls waiting for their decision (default
	// 65536); past it the oldest is decided early.
	MaxPending int
	// MaxProcesses bounds the processes tracked (default 4096).
	MaxProcesses int
	// IgnoreValues makes Ours disregard the ids exchanges carry, to
	// measure what execution context and timing achieve alone.
	IgnoreValues bool
	// Wall converts a goroutine event's monotonic Ns to the spans'
	// wall-clock ns; nil takes Ns as already converted.
	Wall func(mono uint64) int64
	// Explain, when set, receives the reasoning behind each decision of
	// Ours with more than one candidate.
	Explain func(Explanation)
	// MaxPerProcess bounds each process's requests, calls, marks and
	// goroutines (default 65536 each); past it the oldest are dropped.
	MaxPerProcess int
}

func (c Config) withDefaults() Config {
	if c.Method == "" {
		c.Method = Ours
	}
	if c.Delay <= 0 {
		c.Delay = 2 * time.Second
	}
	if c.MaxWait <= 0 {
		c.MaxWait = 5 * time.Second
	}
	if c.MaxWait < c.Delay {
		c.MaxWait = c.Delay
	}
	if c.Retain <= 0 {
		c.Retain = 10 * time.Second
	}
	if c.Retain < 2*c.MaxWait {
		c.Retain = 2 * c.MaxWait
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 65536
	}
	if c.MaxProcesses <= 0 {
		c.MaxProcesses = 4096
	}
	if c.MaxPerProcess <= 0 {
		c.MaxPerProcess = 65536
	}
	return c
}

// Explanation is why Ours chose a call's parent.
type Explanation struct {
	Call       string
	Op         string
	Tokens     []string
	Chosen     string
	Confidence float64
	Candidates []CandidateScore
}

// CandidateScore is one candidate parent's evidence.
type CandidateScore struct {
	SpanID   string
	Op       string
	Start    int64
	Score    float64
	Value    float64
	Affinity float64
	// Rules are the context rules that named this candidate.
	Rules []string
}

// Stats counts what a Correlator did.
type Stats struct {
	Servers, Clients, Hints, GoEvents uint64
	// Decided calls, those given a parent, and those without candidate.
	Decided, WithParent, NoCandidate uint64
	// Early counts calls decided before their delay because MaxPending
	// was reached; Dropped* count state forgotten at a bound.
	Early, DroppedProcesses, DroppedServers, DroppedMarks, DroppedGoroutines uint64
	// Pending calls now.
	Pending int
}

// Correlator assigns parents to client spans. It is not safe for
// concurrent use: the agent's pipeline goroutine owns it.
type Correlator struct {
	cfg     Config
	out     func(schemas.Span)
	procs   map[uint32]*proc
	pending pendingHeap
	now     int64
	pruned  int64
	stats   Stats
}

// New makes a correlator that passes spans to out once decided.
func New(cfg Config, out func(schemas.Span)) (*Correlator, error) {
	if out == nil {
		return nil, fmt.Errorf("correlate: an output is required")
	}
	if cfg.Method != "" {
		if _, err := ParseMethod(string(cfg.Method)); err != nil {
			return nil, err
		}
	}
	return &Correlator{cfg: cfg.withDefaults(), out: out, procs: map[uint32]*proc{}}, nil
}

// Stats returns the counters.
func (c *Correlator) Stats() Stats {
	s := c.stats
	s.Pending = len(c.pending)
	return s
}

var _ conntrack.Sink = (*Correlator)(nil)

func (c *Correlator) proc(pid uint32) *proc {
	p := c.procs[pid]
	if p == nil {
		if len(c.procs) >= c.cfg.MaxProcesses {
			c.evictProcess()
		}
		p = newProc(pid, c.cfg)
		c.procs[pid] = p
	}
	return p
}

// evictProcess forgets the process idle the longest.
func (c *Correlator) evictProcess() {
	var old *proc
	for _, p := range c.procs {
		if old == nil || p.lastNs < old.lastNs || p.lastNs == old.lastNs && p.pid < old.pid {
			old = p
		}
	}
	if old != nil && old.pendingN == 0 {
		delete(c.procs, old.pid)
		c.stats.DroppedProcesses++
	}
}

// Span receives a finished exchange. Server spans pass on at once; client
// spans wait for their decision.
func (c *Correlator) Span(s schemas.Span, ex *protocol.Exchange) {
	p := c.proc(s.PID)
	if s.EndNs > c.now {
		c.now = s.EndNs
	}
	if s.Role == schemas.RoleServer {
		c.stats.Servers++
		p.addServer(&s, ex)
		c.out(s)
		return
	}
	c.stats.Clients++
	cl := p.addClient(&s, ex)
	p.pendingN++
	c.pending.push(cl)
	for len(c.pending) > c.cfg.MaxPending {
		c.stats.Early++
		c.decide(c.pending.pop())
	}
	c.advance()
}

// RequestStart receives a request whose first bytes a server just read.
func (c *Correlator) RequestStart(r conntrack.InFlight) {
	c.stats.Hints++
	c.proc(r.PID).addHint(r)
}

// GoEvent receives a goroutine event of a traced Go process (converted to
// wall-clock ns with Config.Wall when set).
func (c *Correlator) GoEvent(g event.GoEvent) {
	c.stats.GoEvents++
	if c.cfg.Wall != nil {
		g.Ns = uint64(c.cfg.Wall(g.Ns))
	}
	c.proc(g.PID).addGo(g)
}

// Advance tells the correlator that events up to now (wall-clock ns) have
// been handed to it; calls whose delay has passed are decided.
func (c *Correlator) Advance(now int64) {
	if now > c.now {
		c.now = now
	}
	c.advance()
}

func (c *Correlator) advance() {
	due, late := c.now-int64(c.cfg.Delay), c.now-int64(c.cfg.MaxWait)
	for len(c.pending) > 0 {
		h := c.pending[0]
		if h.endNs > due {
			break
		}
		if h.endNs > late {
			if p := c.procs[h.span.PID]; p != nil && p.unresolved(h.reqStart, int64(c.cfg.MaxWait)) {
				break
			}
		}
		c.decide(c.pending.pop())
	}
	if c.now-c.pruned > int64(100*time.Millisecond) {
		c.pruned = c.now
		for _, p := range c.procs {
			p.prune(c.now-int64(c.cfg.Retain), &c.stats)
		}
	}
}

// Oldest returns the start (wall ns) of the oldest call still waiting for
// its decision; ok is false when none waits.
func (c *Correlator) Oldest() (int64, bool) {
	if len(c.pending) == 0 {
		return 0, false
	}
	return c.pending[0].reqStart, true
}

// Tick is Advance, under the name agent/pipeline calls.
func (c *Correlator) Tick(nowWallNs int64) { c.Advance(nowWallNs) }

// Flush decides every pending call, for shutdown or the end of a replay.
func (c *Correlator) Flush() {
	for len(c.pending) > 0 {
		c.decide(c.pending.pop())
	}
}

func (c *Correlator) decide(cl *client) {
	p := c.procs[cl.span.PID]
	if p == nil {
		return
	}
	p.pendingN--
	p.decide(cl, c.cfg.Method)
	c.stats.Decided++
	if cl.parent != nil {
		c.stats.WithParent++
		cl.span.ParentSpanID = cl.parent.id
		cl.span.ParentConfidence = cl.conf
	} else if cl.noCandidate {
		c.stats.NoCandidate++
	}
	c.out(cl.span)
}

// pendingHeap orders calls by start, then span id: calls are decided in
// the order they were made (the decision of one is context for the next),
// each once its delay has passed; a call that arrives late (it ran long)
// is decided after later ones.
type pendingHeap []*client

func (h pendingHeap) less(i, j int) bool {
	a, b := h[i], h[j]
	if a.reqStart != b.reqStart {
		return a.reqStart < b.reqStart
	}
	return a.span.SpanID < b.span.SpanID
}

func (h *pendingHeap) push(c *client) {
	*h = append(*h, c)
	i := len(*h) - 1
	for i > 0 {
		parent := (i - 1) / 2
		if !h.less(i, parent) {
			break
		}
		(*h)[i], (*h)[parent] = (*h)[parent], (*h)[i]
		i = parent
	}
}

func (h *pendingHeap) pop() *client {
	old := *h
	top := old[0]
	n := len(old) - 1
	old[0] = old[n]
	old[n] = nil
	*h = old[:n]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < n && h.less(l, m) {
			m = l
		}
		if r < n && h.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		(*h)[i], (*h)[m] = (*h)[m], (*h)[i]
		i = m
	}
	return top
}
