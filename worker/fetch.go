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
}

func (ss *spanSet) add(in []schemas.Span) int {
	n := 0
	for _, s := range in {
		if ss.ids[s.SpanID] {
			continue
		}
		ss.ids[s.SpanID] = true
		ss.spans = append(ss.spans, s)
		n++
	}
	return n
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

// query reads every span in [from, to] whose field holds one of vals, in
// batches of f.batch values, with optional extra exact filters.
func (f *fetcher) query(ctx context.Context, from, to time.Time, field string, vals []any, extra map[string][]any) ([]schemas.Span, error) {
	var out []schemas.Span
	for len(vals) > 0 {
		n := min(len(vals), f.batch)
		terms := map[string][]any{field: vals[:n]}
		for k, v := range extra {
			terms[k] = v
		}
		vals = vals[n:]
		f.stats.Queries++
		got, err := f.es.Spans(ctx, store.Query{From: from, To: to, Terms: terms, PageSize: f.page})
		if err != nil {
			return nil, err
		}
		f.stats.Fetched += len(got)
		out = append(out, got...)
	}
	return out, nil
}

// keyQuery collects span keys to look up, with the time range they need.
type keyQuery struct {
	vals     []any
	seen     map[any]bool
	from, to int64
}

func (k *keyQuery) add(v any, from, to int64) {
	if k.seen == nil {
		k.seen = map[any]bool{}
	}
	if !k.seen[v] {
		k.seen[v] = true
		k.vals = append(k.vals, v)
	}
	if k.from == 0 || from < k.from {
		k.from = from
	}
	if to > k.to {
		k.to = to
	}
}

func (k *keyQuery) run(ctx context.Context, f *fetcher, field string, extra map[string][]any) ([]schemas.Span, error) {
	if len(k.vals) == 0 {
		return nil, nil
	}
	return f.query(ctx, time.Unix(0, k.from).UTC(), time.Unix(0, k.to).UTC(), field, k.vals, extra)
}

// exchangeKeys adds the lookup of the other end of s's exchange: by TCP
// positions when it has them, else by client port (the tuple and exchange
// number then decide in Build).
func exchangeKeys(s *schemas.Span, byTCP, byPort *keyQuery, from, to int64) {
	if s.ReqTCPSeq != 0 {
		byTCP.add(int64(s.ReqTCPSeq), from, to)
	}
	if s.ReqTCPSeq == 0 || s.RespTCPSeq == 0 {
		byPort.add(int64(s.ClientPort), from, to)
	}
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
	skew := int64(f.opt.Skew)
	ws, we := w.start.UnixNano(), w.end.UnixNano()
	margin := int64(w.margin)

	// 1. Own services.
	ss := &spanSet{ids: map[string]bool{}}
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
	own, err := f.query(ctx, time.Unix(0, ws-skew).UTC(), time.Unix(0, we+margin).UTC(), "service", mine, nil)
	if err != nil {
		return nil, nil, err
	}
	ss.add(own)

	// 2. Up: whether a span of this window roots a trace depends on its
	// parent and on the window its parent's trace is homed in (a trace
	// holds what starts up to Margin past its home window's end). A span
	// that starts after the first Margin of its window, and not within
	// the skew of hops from the window's end, is homed in its own window
	// whatever is above it: if its trace started earlier, the horizon has
	// cut it loose already. So the walk up goes on only from tops in
	// those bands; elsewhere one level (the parent) settles it.
	looked := map[string]bool{}
	var forest *assemble.Forest
	for level := 0; level < maxLevels; level++ {
		forest = assemble.Build(ss.spans, f.opt)
		need := map[int32]bool{}
		for i, s := range forest.Spans {
			if !w.mine(s) || s.StartNs < ws || s.StartNs >= we {
				continue
			}
			top := int32(i)
			for forest.Parent[top] >= 0 {
				top = forest.Parent[top]
			}
			if top == int32(i) || f.ambiguous(forest.Spans[top], margin) {
				need[top] = true
			}
		}
		var byID, byTCP, byPort keyQuery
		for r := range need {
			s := forest.Spans[r]
			if looked[s.SpanID] {
				continue
			}
			looked[s.SpanID] = true
			switch s.Role {
			case schemas.RoleClient:
				if s.ParentSpanID != "" {
					// A parent may have started long before; an hour back
					// is as far as a trace is followed.
					byID.add(s.ParentSpanID, s.StartNs-int64(time.Hour), s.StartNs+skew)
				}
			case schemas.RoleServer:
				exchangeKeys(s, &byTCP, &byPort, s.StartNs-margin-skew, s.StartNs+skew)
			}
		}
		if len(byID.vals)+len(byTCP.vals)+len(byPort.vals) == 0 {
			break
		}
		f.stats.UpLevels++
		added := 0
		for _, q := range []struct {
			k     *keyQuery
			field string
			extra map[string][]any
		}{
			{&byID, "span_id", nil},
			{&byTCP, "req_tcp_seq", map[string][]any{"role": {string(schemas.RoleClient)}}},
			{&byPort, "client_port", map[string][]any{"role": {string(schemas.RoleClient)}}},
		} {
			got, err := q.k.run(ctx, f, q.field, q.extra)
			if err != nil {
				return nil, nil, err
			}
			added += ss.add(got)
		}
		if added == 0 {
			break
		}
	}

	// 3. Down: what the owned trees reach in other shards.
	expanded := map[string]bool{}
	dirty := true
	for level := 0; level < maxLevels; level++ {
		forest = assemble.Build(ss.spans, f.opt)
		dirty = false
		var children, byTCP, byPort keyQuery
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
			s := forest.Spans[i]
			// An own server span's children (client spans of the same
			// service) were fetched with the task's own spans; everything
			// else may lead into another shard.
			if (w.mine(s) && s.Role == schemas.RoleServer) || expanded[s.SpanID] {
				continue
			}
			expanded[s.SpanID] = true
			switch s.Role {
			case schemas.RoleServer:
				children.add(s.SpanID, s.StartNs-int64(f.opt.LocalSlack), min(s.EndNs, we+margin)+int64(f.opt.LocalSlack))
			case schemas.RoleClient:
				exchangeKeys(s, &byTCP, &byPort, s.StartNs-skew, min(s.EndNs, we+margin)+skew)
			}
		}
		if len(children.vals)+len(byTCP.vals)+len(byPort.vals) == 0 {
			break
		}
		f.stats.DownLevel++
		added := 0
		for _, q := range []struct {
			k     *keyQuery
			field string
			extra map[string][]any
		}{
			{&children, "parent_span_id", nil},
			{&byTCP, "req_tcp_seq", map[string][]any{"role": {string(schemas.RoleServer)}}},
			{&byPort, "client_port", map[string][]any{"role": {string(schemas.RoleServer)}}},
		} {
			got, err := q.k.run(ctx, f, q.field, q.extra)
			if err != nil {
				return nil, nil, err
			}
			added += ss.add(got)
		}
		if added == 0 {
			break
		}
		dirty = true
	}
	if dirty {
		forest = assemble.Build(ss.spans, f.opt)
	}
	return forest, ss, nil
}
