package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
	"github.com/deeptrace/deeptrace/worker/assemble"
)

// A task assembles the traces whose root is a span of one of its shard's
// services starting in its window. Its spans come from the engine in
// three steps, every query batched over many keys and naming only the
// hourly indices its time range touches:
//
//  1. its own services' spans, from Skew before the window to Margin
//     after it;
//  2. up: the parent of every own span of the window that has none in
//     hand (a client span's local parent by id, a server span's client
//     spans by TCP positions or client port), and further up only through
//     spans near a window's edges, where the window a trace is homed in
//     is not settled locally — enough to know whether a span of this
//     window belongs to a trace homed here, to one homed earlier (which
//     holds it up to its horizon), or roots its own;
//  3. down: from the trees this task owns, the children and server spans
//     that live in other shards' services, level by level.
//
// Assembly is then one Build over everything fetched, with the horizon of
// the task's window and margin.

// window is what a task works on.
type window struct {
	start, end time.Time
	margin     time.Duration
	shard      int
	shards     int
	services   map[string]bool // the shard's services seen in the window
	only       map[string]bool // a reassembly limited to these root services (nil: all)
}

func (w *window) mine(s *schemas.Span) bool { return w.services[s.Service] }

// owns reports whether the task writes the trace rooted at s.
func (w *window) owns(s *schemas.Span) bool {
	if !w.mine(s) || s.StartNs < w.start.UnixNano() || s.StartNs >= w.end.UnixNano() {
		return false
	}
	return w.only == nil || w.only[s.Service]
}

// spanSet is the spans fetched so far, by id.
type spanSet struct {
	spans []schemas.Span
	ids   map[string]bool
	// exact holds the exchanges whose server span is in hand with both
	// TCP positions: the exact join for a client span of the same
	// connection and positions.
	exact map[tcpExchange]bool
}

// tcpExchange is an exchange by its TCP positions on a connection.
type tcpExchange struct {
	conn schemas.Conn
	tcp  uint64
}

func newSpanSet() *spanSet {
	return &spanSet{ids: map[string]bool{}, exact: map[tcpExchange]bool{}}
}

// keep takes in the spans appended to ss.spans from index n0 on, dropping
// those already in hand (the same span read twice).
func (ss *spanSet) keep(n0 int) {
	out := n0
	for j := n0; j < len(ss.spans); j++ {
		s := &ss.spans[j]
		if ss.ids[s.SpanID] {
			continue
		}
		ss.ids[s.SpanID] = true
		if s.Role == schemas.RoleServer && s.ReqTCPSeq != 0 && s.RespTCPSeq != 0 {
			ss.exact[tcpExchange{s.Conn, assemble.TCPKey(s)}] = true
		}
		if out != j {
			ss.spans[out] = *s
		}
		out++
	}
	clear(ss.spans[out:])
	ss.spans = ss.spans[:out]
}

// servedExactly reports whether client span c's exact server span (same
// connection, same TCP positions) is in hand.
func (ss *spanSet) servedExactly(c *schemas.Span) bool {
	return c.ReqTCPSeq != 0 && c.RespTCPSeq != 0 && ss.exact[tcpExchange{c.Conn, assemble.TCPKey(c)}]
}

// fetchStats counts a fetch's engine work.
type fetchStats struct {
	Queries   int
	Fetched   int // span documents read (with repeats)
	UpLevels  int
	DownLevel int
}

type fetcher struct {
	es    *store.Store
	opt   assemble.Options
	batch int // keys per terms query
	page  int
	stats fetchStats
}

// services lists the services with spans in [from, to].
func (f *fetcher) services(ctx context.Context, from, to time.Time) ([]string, error) {
	f.stats.Queries++
	res, err := f.es.Search(ctx, f.es.Indices().ForRange(schemas.KindSpans, from, to), map[string]any{
		"size": 0,
		"query": map[string]any{"range": map[string]any{"timestamp": map[string]any{
			"gte": from.UTC().Format(time.RFC3339Nano), "lte": to.UTC().Format(time.RFC3339Nano)}}},
		"aggs": map[string]any{"services": map[string]any{"terms": map[string]any{"field": "service", "size": 10000}}},
	})
	if err != nil {
		return nil, fmt.Errorf("services in %s..%s: %w", from.Format(time.RFC3339), to.Format(time.RFC3339), err)
	}
	var aggs struct {
		Services struct {
			Buckets []struct {
				Key string `json:"key"`
			} `json:"buckets"`
		} `json:"services"`
	}
	if len(res.Aggregations) > 0 {
		if err := json.Unmarshal(res.Aggregations, &aggs); err != nil {
			return nil, fmt.Errorf("services: decode: %w", err)
		}
	}
	out := make([]string, 0, len(aggs.Services.Buckets))
	for _, b := range aggs.Services.Buckets {
		out = append(out, b.Key)
	}
	return out, nil
}

// query appends to dst every span in [from, to] whose field holds one of
// vals, in batches of f.batch values, with optional extra exact filters.
func (f *fetcher) query(ctx context.Context, from, to time.Time, field string, vals []any, extra map[string][]any, dst []schemas.Span) ([]schemas.Span, error) {
	for len(vals) > 0 {
		n := min(len(vals), f.batch)
		terms := map[string][]any{field: vals[:n]}
		for k, v := range extra {
			terms[k] = v
		}
		vals = vals[n:]
		f.stats.Queries++
		n0 := len(dst)
		var err error
		dst, err = f.es.AppendSpans(ctx, store.Query{From: from, To: to, Terms: terms, PageSize: f.page}, dst)
		f.stats.Fetched += len(dst) - n0
		if err != nil {
			return dst, err
		}
	}
	return dst, nil
}

// keyQuery collects span keys to look up by one field (and role), with
// the time range they need. A key already read over a range covering the
// one asked (by an earlier level) is not read again: that lookup returned
// every span holding it there, so a second one cannot find more. The
// client-port lookups depend on this, since every exchange on a pooled
// connection shares the port.
type keyQuery struct {
	field string
	role  schemas.Role // "" for both
	vals  []any
	seen  map[any]bool
	// from and to bound the lookup (ns): the union of the keys' ranges.
	from, to int64
	// done is the range each key was read over, kept across levels.
	done map[any][2]int64
}

func newKeyQuery(field string, role schemas.Role) *keyQuery {
	return &keyQuery{field: field, role: role, done: map[any][2]int64{}}
}

func (k *keyQuery) add(v any, from, to int64) {
	if to < from {
		// A span that ends before it starts (a bogus document) still
		// names a valid range: its start.
		to = from
	}
	if r, ok := k.done[v]; ok && r[0] <= from && to <= r[1] {
		return
	}
	if len(k.vals) == 0 {
		k.from, k.to = from, to
	}
	k.from, k.to = min(k.from, from), max(k.to, to)
	if k.seen == nil {
		k.seen = map[any]bool{}
	}
	if !k.seen[v] {
		k.seen[v] = true
		k.vals = append(k.vals, v)
	}
}

// run appends to dst the spans holding the collected keys and marks them
// done.
func (k *keyQuery) run(ctx context.Context, f *fetcher, dst []schemas.Span) ([]schemas.Span, error) {
	if len(k.vals) == 0 {
		return dst, nil
	}
	var extra map[string][]any
	if k.role != "" {
		extra = map[string][]any{"role": {string(k.role)}}
	}
	dst, err := f.query(ctx, time.Unix(0, k.from).UTC(), time.Unix(0, k.to).UTC(), k.field, k.vals, extra, dst)
	if err != nil {
		return dst, err
	}
	k.markDone()
	return dst, nil
}

// markDone records the collected keys as read over the query's range and
// clears the query for the next level.
func (k *keyQuery) markDone() {
	for _, v := range k.vals {
		r, ok := k.done[v]
		if ok && r[0] <= k.to && k.from <= r[1] {
			r = [2]int64{min(r[0], k.from), max(r[1], k.to)}
		} else {
			r = [2]int64{k.from, k.to}
		}
		k.done[v] = r
	}
	k.vals, k.seen = k.vals[:0], nil
}

// exchangeKeys adds the lookup of the other end of s's exchange: by TCP
// positions when it has them, else by client port (the tuple and exchange
// number then decide in Build).
func exchangeKeys(s *schemas.Span, byTCP, byPort *keyQuery, a *asked, from, to int64) {
	if s.ReqTCPSeq != 0 {
		byTCP.add(int64(s.ReqTCPSeq), from, to)
		a.tcp[assemble.TCPKey(s)] = true
	}
	if s.ReqTCPSeq == 0 || s.RespTCPSeq == 0 {
		byPort.add(int64(s.ClientPort), from, to)
		a.exchanges[seqExchange{s.Conn, s.Seq}] = true
	}
}

// asked remembers what a walk's lookups asked for, to tell the spans that
// answer them from those a lookup brings along: a client port is shared
// by every exchange of a pooled connection.
type asked struct {
	ids       map[string]bool // span ids (up) or parent span ids (down)
	tcp       map[uint64]bool // TCP positions (assemble.TCPKey)
	exchanges map[seqExchange]bool
}

// seqExchange is an exchange by its number on a connection.
type seqExchange struct {
	conn schemas.Conn
	seq  uint64
}

func newAsked() *asked {
	return &asked{ids: map[string]bool{}, tcp: map[uint64]bool{}, exchanges: map[seqExchange]bool{}}
}

// answers reports whether s is what a lookup asked for; id is s's span id
// on the way up, its parent's on the way down.
func (a *asked) answers(s *schemas.Span, id string) bool {
	if a.ids[id] {
		return true
	}
	if k := assemble.TCPKey(s); k != 0 && a.tcp[k] {
		return true
	}
	return a.exchanges[seqExchange{s.Conn, s.Seq}]
}

// servedExactly reports whether client span i is joined to a server span
// on the same connection with the same TCP positions: the best join there
// is, so looking its exchange up again cannot change it.
func servedExactly(forest *assemble.Forest, i int32) bool {
	c := forest.Spans[i]
	if assemble.TCPKey(c) == 0 || c.ReqTCPSeq == 0 || c.RespTCPSeq == 0 {
		return false
	}
	for _, k := range forest.Children(i) {
		s := forest.Spans[k]
		if s.Role == schemas.RoleServer && s.Conn == c.Conn && assemble.TCPKey(s) == assemble.TCPKey(c) {
			return true
		}
	}
	return false
}

const maxLevels = 64

// maxHops bounds the cross-host hops whose clock skew can put an ancestor
// after its descendant; a span this many skews from its window's end may
// belong to a trace homed in the next window.
const maxHops = 8

// ambiguous reports whether the window a span's trace is homed in needs
// its ancestors: only a span in the first Margin of its window (its trace
// may have started in the previous one), or so close to the window's end
// that an ancestor may start in the next, skewed.
func (f *fetcher) ambiguous(s *schemas.Span, margin int64) bool {
	ws := time.Unix(0, s.StartNs).UTC().Truncate(f.opt.Window).UnixNano()
	we := ws + int64(f.opt.Window)
	skew := int64(f.opt.Skew)
	return s.StartNs <= ws+margin+skew || s.StartNs > we-maxHops*skew
}

// fetch gathers the spans task w needs and returns them assembled.
func (f *fetcher) fetch(ctx context.Context, w *window) (*assemble.Forest, *spanSet, error) {
	ws, we := w.start.UnixNano(), w.end.UnixNano()

	// 1. Own services.
	ss := newSpanSet()
	mine := make([]any, 0, len(w.services))
	for s := range w.services {
		mine = append(mine, s)
	}
	slices.SortFunc(mine, func(a, b any) int {
		if a.(string) < b.(string) {
			return -1
		}
		return 1
	})
	n0 := len(ss.spans)
	var err error
	ss.spans, err = f.query(ctx, time.Unix(0, ws-int64(f.opt.Skew)).UTC(), time.Unix(0, we+int64(w.margin)).UTC(), "service", mine, nil, ss.spans)
	if err != nil {
		return nil, nil, err
	}
	ss.keep(n0)

	if err := f.up(ctx, w, ss); err != nil {
		return nil, nil, err
	}
	forest, err := f.down(ctx, w, ss)
	if err != nil {
		return nil, nil, err
	}
	return forest, ss, nil
}

// up walks from the window's own spans to what decides where their traces
// are homed. Whether a span of this window roots a trace depends on its
// parent and on the window its parent's trace is homed in (a trace holds
// what starts up to Margin past its home window's end). A span that starts
// after the first Margin of its window, and not within the skew of hops
// from the window's end, is homed in its own window whatever is above it:
// if its trace started earlier, the horizon has cut it loose already. So
// the walk goes on only from tops in those bands; elsewhere one level (the
// parent) settles it.
func (f *fetcher) up(ctx context.Context, w *window, ss *spanSet) error {
	skew, margin := int64(f.opt.Skew), int64(w.margin)
	ws, we := w.start.UnixNano(), w.end.UnixNano()
	byID := newKeyQuery("span_id", "")
	byTCP := newKeyQuery("req_tcp_seq", schemas.RoleClient)
	byPort := newKeyQuery("client_port", schemas.RoleClient)
	queries := []*keyQuery{byID, byTCP, byPort}
	a := newAsked()
	looked := map[string]bool{}
	lookUp := func(s *schemas.Span) {
		if looked[s.SpanID] {
			return
		}
		looked[s.SpanID] = true
		switch s.Role {
		case schemas.RoleClient:
			if s.ParentSpanID != "" && !ss.ids[s.ParentSpanID] {
				// A parent may have started long before; an hour back is
				// as far as a trace is followed.
				byID.add(s.ParentSpanID, s.StartNs-int64(time.Hour), s.StartNs+skew)
				a.ids[s.ParentSpanID] = true
			}
		case schemas.RoleServer:
			exchangeKeys(s, byTCP, byPort, a, s.StartNs-margin-skew, s.StartNs+skew)
		}
	}
	for round := 0; round < maxLevels; round++ {
		forest := assemble.Build(ss.spans, f.opt)
		for i, s := range forest.Spans {
			if !w.mine(s) || s.StartNs < ws || s.StartNs >= we {
				continue
			}
			top := int32(i)
			for forest.Parent[top] >= 0 {
				top = forest.Parent[top]
			}
			if top == int32(i) || f.ambiguous(forest.Spans[top], margin) {
				lookUp(forest.Spans[top])
			}
		}
		if pending(queries) == 0 {
			return nil
		}
		// Climb on without rebuilding the forest at every level: a span
		// that answers a lookup is the parent of the top that asked for
		// it, so the likely new top, and its own parent is wanted when its
		// window is ambiguous too. The next round's forest checks the
		// guesses.
		for level := 0; pending(queries) > 0 && level < maxLevels; level++ {
			f.stats.UpLevels++
			n0 := len(ss.spans)
			if err := f.run(ctx, queries, ss); err != nil {
				return err
			}
			for j := n0; j < len(ss.spans); j++ {
				if s := &ss.spans[j]; a.answers(s, s.SpanID) && f.ambiguous(s, margin) {
					lookUp(s)
				}
			}
		}
	}
	return nil
}

// down fetches what the owned trees reach in other shards, level by
// level, and returns the forest of everything fetched.
func (f *fetcher) down(ctx context.Context, w *window, ss *spanSet) (*assemble.Forest, error) {
	skew, slack, margin := int64(f.opt.Skew), int64(f.opt.LocalSlack), int64(w.margin)
	horizon := w.end.UnixNano() + margin // of every trace this task owns
	children := newKeyQuery("parent_span_id", "")
	byTCP := newKeyQuery("req_tcp_seq", schemas.RoleServer)
	byPort := newKeyQuery("client_port", schemas.RoleServer)
	queries := []*keyQuery{children, byTCP, byPort}
	a := newAsked()
	expanded := map[string]bool{}
	expand := func(s *schemas.Span) {
		expanded[s.SpanID] = true
		switch s.Role {
		case schemas.RoleServer:
			children.add(s.SpanID, s.StartNs-slack, min(s.EndNs, horizon)+slack)
			a.ids[s.SpanID] = true
		case schemas.RoleClient:
			exchangeKeys(s, byTCP, byPort, a, s.StartNs-skew, min(s.EndNs, horizon)+skew)
		}
	}
	// An own server span's children (client spans of the same service)
	// were fetched with the task's own spans; everything else may lead
	// into another shard.
	settled := func(s *schemas.Span) bool {
		return expanded[s.SpanID] || (w.mine(s) && s.Role == schemas.RoleServer)
	}
	for round := 0; ; round++ {
		forest := assemble.Build(ss.spans, f.opt)
		var stack []int32
		for _, r := range forest.Roots {
			if w.owns(forest.Spans[r]) {
				stack = append(stack, r)
			}
		}
		for len(stack) > 0 {
			i := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			stack = append(stack, forest.Children(i)...)
			if s := forest.Spans[i]; !settled(s) {
				if s.Role == schemas.RoleClient && servedExactly(forest, i) {
					expanded[s.SpanID] = true
					continue
				}
				expand(s)
			}
		}
		if pending(queries) == 0 || round == maxLevels {
			return forest, nil
		}
		// Descend without rebuilding the forest at every level: a span
		// that answers a lookup is a child of the span that asked for it.
		// A span past the horizon cannot be in an owned trace; a client
		// span whose exact server span is in hand is left to the next
		// round's forest, which checks every guess.
		for level := 0; pending(queries) > 0 && level < maxLevels; level++ {
			f.stats.DownLevel++
			n0 := len(ss.spans)
			if err := f.run(ctx, queries, ss); err != nil {
				return nil, err
			}
			for j := n0; j < len(ss.spans); j++ {
				s := &ss.spans[j]
				if s.StartNs > horizon || settled(s) || !a.answers(s, s.ParentSpanID) ||
					(s.Role == schemas.RoleClient && ss.servedExactly(s)) {
					continue
				}
				expand(s)
			}
		}
	}
}

// pending counts the keys the queries have yet to look up.
func pending(queries []*keyQuery) int {
	n := 0
	for _, k := range queries {
		n += len(k.vals)
	}
	return n
}

// run looks up the queries' keys and adds the spans not in hand yet to ss.
func (f *fetcher) run(ctx context.Context, queries []*keyQuery, ss *spanSet) error {
	for _, k := range queries {
		n0 := len(ss.spans)
		var err error
		if ss.spans, err = k.run(ctx, f, ss.spans); err != nil {
			return err
		}
		ss.keep(n0)
	}
	return nil
}
