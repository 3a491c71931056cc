package rollup

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// Filter selects metric documents; empty fields match anything.
type Filter struct {
	Scope     schemas.Scope
	Service   string
	Operation string
	Peer      string
	// Services limits to these services (OR), on top of Service.
	Services []string
}

// Read returns the metric documents of minutes in [from, to) that f
// selects.
func Read(ctx context.Context, es *store.Store, from, to time.Time, f Filter) ([]schemas.Metric, error) {
	terms := map[string][]any{}
	if f.Scope != "" {
		terms["scope"] = []any{string(f.Scope)}
	}
	if f.Service != "" {
		terms["service"] = []any{f.Service}
	}
	if len(f.Services) > 0 {
		terms["service"] = toAny(f.Services)
	}
	if f.Operation != "" {
		terms["operation"] = []any{f.Operation}
	}
	if f.Peer != "" {
		terms["peer_service"] = []any{f.Peer}
	}
	var out []schemas.Metric
	q := store.Query{Kind: schemas.KindMetrics, From: from, To: to.Add(-time.Nanosecond), Terms: terms, PageSize: 5000,
		Sort: []store.SortKey{{Field: "timestamp"}, {Field: "_id"}}}
	err := es.Scan(ctx, q, func(hits []store.Hit) error {
		for _, h := range hits {
			var m schemas.Metric
			if err := json.Unmarshal(h.Source, &m); err != nil {
				return fmt.Errorf("decode metric %s: %w", h.ID, err)
			}
			out = append(out, m)
		}
		return nil
	})
	return out, err
}

// Point is one step of a series. Latencies are in nanoseconds; Rate is
// requests per second over the step.
type Point struct {
	T         time.Time `json:"t"`
	Count     int64     `json:"count"`
	Errors    int64     `json:"errors"`
	Rate      float64   `json:"rate"`
	ErrorRate float64   `json:"error_rate"`
	P50Ns     int64     `json:"p50_ns"`
	P90Ns     int64     `json:"p90_ns"`
	P99Ns     int64     `json:"p99_ns"`
	MaxNs     int64     `json:"max_ns"`
	MeanNs    int64     `json:"mean_ns"`
	// Exact says the percentiles are exact (one document in the step);
	// otherwise they come from merged sketches, within
	// schemas.SketchAccuracy.
	Exact bool `json:"exact"`
}

// Aggregate folds metric documents into one point for a span of length
// step starting at t.
func Aggregate(t time.Time, step time.Duration, ms []schemas.Metric) Point {
	p := Point{T: t}
	var sk schemas.Sketch
	var sum int64
	for i := range ms {
		m := &ms[i]
		p.Count += m.Count
		p.Errors += m.Errors
		sum += m.SumNs
		p.MaxNs = max(p.MaxNs, m.MaxNs)
		sk.Merge(m.Sketch)
	}
	p.Rate = float64(p.Count) / step.Seconds()
	if p.Count > 0 {
		p.ErrorRate = float64(p.Errors) / float64(p.Count)
		p.MeanNs = sum / p.Count
	}
	if len(ms) == 1 {
		p.P50Ns, p.P90Ns, p.P99Ns, p.Exact = ms[0].P50Ns, ms[0].P90Ns, ms[0].P99Ns, true
	} else if p.Count > 0 {
		p.P50Ns, p.P90Ns, p.P99Ns = sk.Quantile(0.50), sk.Quantile(0.90), sk.Quantile(0.99)
	}
	return p
}

// Series buckets documents of one key into steps over [from, to); steps
// without documents are zero points. step is a multiple of a minute.
func Series(ms []schemas.Metric, from, to time.Time, step time.Duration) []Point {
	from = from.UTC().Truncate(step)
	by := map[int64][]schemas.Metric{}
	for _, m := range ms {
		k := m.Timestamp.UTC().Truncate(step).UnixNano()
		by[k] = append(by[k], m)
	}
	var out []Point
	for t := from; t.Before(to); t = t.Add(step) {
		out = append(out, Aggregate(t, step, by[t.UnixNano()]))
	}
	return out
}

// EdgeSummary is one caller→callee edge over a range.
type EdgeSummary struct {
	Caller string `json:"caller"`
	Callee string `json:"callee"`
	Point
}

// Edges summarises the edge documents over a range of length d.
func Edges(ms []schemas.Metric, d time.Duration) []EdgeSummary {
	type ek struct{ a, b string }
	by := map[ek][]schemas.Metric{}
	for _, m := range ms {
		if m.Scope == schemas.ScopeEdge {
			k := ek{m.Service, m.PeerService}
			by[k] = append(by[k], m)
		}
	}
	out := make([]EdgeSummary, 0, len(by))
	for k, v := range by {
		p := Aggregate(time.Time{}, d, v)
		out = append(out, EdgeSummary{Caller: k.a, Callee: k.b, Point: p})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Caller != out[j].Caller {
			return out[i].Caller < out[j].Caller
		}
		return out[i].Callee < out[j].Callee
	})
	return out
}
