package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/deeptrace/deeptrace/schemas"
)

// MaxTraceLimit bounds the traces one search returns.
const MaxTraceLimit = 1500

// ErrNotFound is returned when a document asked for by id does not exist.
var ErrNotFound = errors.New("not found")

// TraceFilter selects assembled traces. Empty fields do not filter.
type TraceFilter struct {
	// From and To bound the trace's start (its earliest span).
	From, To time.Time
	// Service must be among the trace's services.
	Service string
	// Operation must be an operation of Service in the trace (it needs
	// Service).
	Operation string
	// Tags are "key=value" strings each of which some span of the trace
	// carries.
	Tags []string
	// Hosts: the trace touches any of them.
	Hosts []string
	// MinDuration and MaxDuration bound the trace's duration (0: open).
	MinDuration, MaxDuration time.Duration
	// Error keeps, when set, only traces with a failed span (true) or
	// only traces without one (false).
	Error *bool
	// Limit is the most traces returned, newest first (default 20).
	Limit int
}

// Validate checks a filter before it reaches the engine.
func (f TraceFilter) Validate() error {
	switch {
	case f.From.IsZero() || f.To.IsZero():
		return errors.New("trace search: from and to are required")
	case f.To.Before(f.From):
		return fmt.Errorf("trace search: end %s before start %s", f.To.Format(time.RFC3339), f.From.Format(time.RFC3339))
	case f.Operation != "" && f.Service == "":
		return errors.New("trace search: operation needs a service")
	case f.MinDuration < 0 || f.MaxDuration < 0:
		return errors.New("trace search: negative duration bound")
	case f.MaxDuration > 0 && f.MaxDuration < f.MinDuration:
		return fmt.Errorf("trace search: max duration %s below min duration %s", f.MaxDuration, f.MinDuration)
	case f.Limit < 0 || f.Limit > MaxTraceLimit:
		return fmt.Errorf("trace search: limit %d outside 1..%d", f.Limit, MaxTraceLimit)
	}
	return nil
}

func (f TraceFilter) query() map[string]any {
	filter := []any{rangeFilter("timestamp", f.From, f.To)}
	term := func(field string, v any) {
		filter = append(filter, map[string]any{"term": map[string]any{field: v}})
	}
	if f.Service != "" {
		term("services", f.Service)
	}
	if f.Operation != "" {
		term("operations", f.Service+" "+f.Operation)
	}
	for _, kv := range f.Tags {
		term("tag_kv", kv)
	}
	if len(f.Hosts) > 0 {
		filter = append(filter, map[string]any{"terms": map[string]any{"hosts": f.Hosts}})
	}
	if f.MinDuration > 0 || f.MaxDuration > 0 {
		r := map[string]any{}
		if f.MinDuration > 0 {
			r["gte"] = int64(f.MinDuration)
		}
		if f.MaxDuration > 0 {
			r["lte"] = int64(f.MaxDuration)
		}
		filter = append(filter, map[string]any{"range": map[string]any{"duration_ns": r}})
	}
	if f.Error != nil {
		term("error", *f.Error)
	}
	return map[string]any{"bool": map[string]any{"filter": filter}}
}

func rangeFilter(field string, from, to time.Time) map[string]any {
	return map[string]any{"range": map[string]any{field: map[string]any{
		"gte": from.UTC().Format(time.RFC3339Nano), "lte": to.UTC().Format(time.RFC3339Nano),
	}}}
}

// newestFirst sorts traces by start, newest first, with the trace id as the
// unique tie-breaker that search_after needs.
var newestFirst = []any{
	map[string]any{"start_ns": map[string]any{"order": "desc"}},
	map[string]any{"trace_id": map[string]any{"order": "asc"}},
}

// SearchTraces returns the newest traces f selects. Without withSpans the
// spans are left out of the documents read (a summary: the search fields
// only), which keeps a search cheap however big its traces are.
func (s *Store) SearchTraces(ctx context.Context, f TraceFilter, withSpans bool) ([]schemas.Trace, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	if f.Limit == 0 {
		f.Limit = 20
	}
	body := map[string]any{
		"query":            f.query(),
		"sort":             newestFirst,
		"size":             f.Limit,
		"track_total_hits": false,
	}
	if !withSpans {
		body["_source"] = map[string]any{"excludes": []string{"spans"}}
	}
	res, err := s.Search(ctx, s.ix.ForRange(schemas.KindTraces, f.From, f.To), body)
	if err != nil {
		return nil, fmt.Errorf("trace search: %w", err)
	}
	out := make([]schemas.Trace, 0, len(res.Hits.Hits))
	for _, h := range res.Hits.Hits {
		var t schemas.Trace
		if err := json.Unmarshal(h.Source, &t); err != nil {
			return nil, fmt.Errorf("decode trace %s/%s: %w", h.Index, h.ID, err)
		}
		out = append(out, t)
	}
	return out, nil
}

// TraceSource returns the stored document of trace id as it is (the JSON of
// a schemas.Trace), looking in every retained trace index, so a trace stays
// fetchable as long as its index exists, whatever its age. The document is
// read whole: a trace is one document, and no result window applies to it.
// ErrNotFound when no index holds it.
//
// It takes two requests: a search over the trace indices that finds which
// one holds the id (no source), then GET _source of that document, which
// the engine sends as stored. Searching with the source costs half as much
// again for big traces (the engine re-encodes the source into the search
// response: 1.5-2 s against 0.9 s for a 38 MB, 50,000-span trace here).
func (s *Store) TraceSource(ctx context.Context, id string) (json.RawMessage, error) {
	index, err := s.traceIndex(ctx, id)
	if err != nil {
		return nil, err
	}
	req := esapi.GetSourceRequest{Index: index, DocumentID: id}
	res, err := req.Do(ctx, s.es)
	if err != nil {
		return nil, decode(nil, err, "get trace "+id, nil)
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusNotFound {
		// Deleted (retention) between the two requests.
		return nil, fmt.Errorf("trace %s: %w", id, ErrNotFound)
	}
	if res.IsError() {
		return nil, decode(res, nil, "get trace "+id+" from "+index, nil)
	}
	var buf bytes.Buffer
	if n, err := strconv.Atoi(res.Header.Get("Content-Length")); err == nil && n > 0 {
		buf.Grow(n)
	}
	if _, err := buf.ReadFrom(res.Body); err != nil {
		return nil, fmt.Errorf("get trace %s: read: %w", id, err)
	}
	return buf.Bytes(), nil
}

// traceIndex finds the index holding trace id. The id is derived from the
// root span, which fixes the day, so one index holds it; if a clock step
// ever wrote it twice, the newest assembly wins.
func (s *Store) traceIndex(ctx context.Context, id string) (string, error) {
	body, err := json.Marshal(map[string]any{
		"query":            map[string]any{"ids": map[string]any{"values": []string{id}}},
		"sort":             []any{map[string]any{"assembled_at": map[string]any{"order": "desc", "unmapped_type": "date"}}},
		"size":             1,
		"_source":          false,
		"track_total_hits": false,
	})
	if err != nil {
		return "", err
	}
	req := esapi.SearchRequest{
		Index:             []string{s.ix.Pattern(schemas.KindTraces)},
		Body:              bytes.NewReader(body),
		IgnoreUnavailable: esapi.BoolPtr(true),
		AllowNoIndices:    esapi.BoolPtr(true),
		FilterPath:        []string{"hits.hits._index"},
	}
	res, err := req.Do(ctx, s.es)
	var out struct {
		Hits struct {
			Hits []struct {
				Index string `json:"_index"`
			} `json:"hits"`
		} `json:"hits"`
	}
	if err := decode(res, err, "find trace "+id, &out); err != nil {
		return "", err
	}
	if len(out.Hits.Hits) == 0 {
		return "", fmt.Errorf("trace %s: %w", id, ErrNotFound)
	}
	return out.Hits.Hits[0].Index, nil
}

// Trace returns trace id decoded (see TraceSource).
func (s *Store) Trace(ctx context.Context, id string) (*schemas.Trace, error) {
	src, err := s.TraceSource(ctx, id)
	if err != nil {
		return nil, err
	}
	var t schemas.Trace
	if err := json.Unmarshal(src, &t); err != nil {
		return nil, fmt.Errorf("decode trace %s: %w", id, err)
	}
	return &t, nil
}

// traceIndices names the trace indices of [from, to], or all of them when
// the range is open.
func (s *Store) traceIndices(from, to time.Time) []string {
	if from.IsZero() || to.IsZero() {
		return []string{s.ix.Pattern(schemas.KindTraces)}
	}
	return s.ix.ForRange(schemas.KindTraces, from, to)
}

func timeFilter(from, to time.Time) []any {
	if from.IsZero() || to.IsZero() {
		return []any{}
	}
	return []any{rangeFilter("timestamp", from, to)}
}

// maxTerms bounds the distinct services or operations one listing returns.
const maxTerms = 10000

type termsAgg struct {
	Buckets []struct {
		Key      string `json:"key"`
		DocCount int64  `json:"doc_count"`
	} `json:"buckets"`
	SumOtherDocCount int64 `json:"sum_other_doc_count"`
}

func (s *Store) terms(ctx context.Context, indices []string, query map[string]any, field string, include string) ([]string, error) {
	agg := map[string]any{"field": field, "size": maxTerms, "order": map[string]any{"_key": "asc"}}
	if include != "" {
		agg["include"] = include
	}
	res, err := s.Search(ctx, indices, map[string]any{
		"size": 0, "track_total_hits": false, "query": query,
		"aggs": map[string]any{"t": map[string]any{"terms": agg}},
	})
	if err != nil {
		return nil, err
	}
	var aggs struct {
		T termsAgg `json:"t"`
	}
	if len(res.Aggregations) > 0 {
		if err := json.Unmarshal(res.Aggregations, &aggs); err != nil {
			return nil, fmt.Errorf("decode %s aggregation: %w", field, err)
		}
	}
	out := make([]string, 0, len(aggs.T.Buckets))
	for _, b := range aggs.T.Buckets {
		out = append(out, b.Key)
	}
	return out, nil
}

// Services lists the services seen in traces that started in [from, to],
// sorted; a zero from or to lists them over every retained trace index.
func (s *Store) Services(ctx context.Context, from, to time.Time) ([]string, error) {
	q := map[string]any{"bool": map[string]any{"filter": timeFilter(from, to)}}
	out, err := s.terms(ctx, s.traceIndices(from, to), q, "services", "")
	if err != nil {
		return nil, fmt.Errorf("list services: %w", err)
	}
	return out, nil
}

// Operations lists the operations of service seen in traces that started in
// [from, to], sorted; a zero from or to means every retained trace index.
func (s *Store) Operations(ctx context.Context, service string, from, to time.Time) ([]string, error) {
	filter := append(timeFilter(from, to), map[string]any{"term": map[string]any{"services": service}})
	q := map[string]any{"bool": map[string]any{"filter": filter}}
	prefix := service + " "
	out, err := s.terms(ctx, s.traceIndices(from, to), q, "operations", luceneRegexpQuote(prefix)+".*")
	if err != nil {
		return nil, fmt.Errorf("list operations of %s: %w", service, err)
	}
	for i := range out {
		out[i] = strings.TrimPrefix(out[i], prefix)
	}
	return out, nil
}

var luceneRegexpSpecial = regexp.MustCompile(`[.?+*|{}\[\]()"\\#@&<>~]`)

// luceneRegexpQuote escapes s for a Lucene regular expression (the terms
// aggregation's include).
func luceneRegexpQuote(s string) string {
	return luceneRegexpSpecial.ReplaceAllStringFunc(s, func(c string) string { return `\` + c })
}

// DependencyEdge is the calls from one service to another over a time
// range. Latency is the caller's view (client span) where the caller was
// traced, else the callee's.
type DependencyEdge struct {
	Parent    string  `json:"parent"`
	Child     string  `json:"child"`
	Calls     int64   `json:"calls"`
	Errors    int64   `json:"errors"`
	ErrorRate float64 `json:"error_rate"`
	P50Ns     int64   `json:"p50_ns"`
	P90Ns     int64   `json:"p90_ns"`
	P99Ns     int64   `json:"p99_ns"`
	MaxNs     int64   `json:"max_ns"`
}

// DependencyGraph is the service map of a time range.
type DependencyGraph struct {
	Edges []DependencyEdge `json:"edges"`
	// Traces is how many traces were read; Sampled says the range held
	// more than the cap and only the newest were read.
	Traces  int  `json:"traces"`
	Sampled bool `json:"sampled"`
}

// DependencyFilter selects the traces a dependency graph is built from.
type DependencyFilter struct {
	From, To time.Time
	// Service keeps the edges that touch it (and reads only its traces).
	Service string
	// MaxTraces caps the traces read, newest first (default 20000).
	MaxTraces int
}

// Dependencies builds the service map of the traces that started in
// [from, to]: an edge per (calling service, called service) with call
// count, errors and latency percentiles. Spans are stored unindexed inside
// the traces, so no aggregation can see the calls: it reads the traces'
// spans (only the few fields it needs) and counts in memory, newest traces
// first, up to MaxTraces. A client span whose callee has no agent (a
// database, a cache, an outside API) gives an edge to a peer named
// "protocol://ip:port".
func (s *Store) Dependencies(ctx context.Context, f DependencyFilter) (DependencyGraph, error) {
	var g DependencyGraph
	if f.From.IsZero() || f.To.IsZero() || f.To.Before(f.From) {
		return g, fmt.Errorf("dependencies: bad range %s..%s", f.From.Format(time.RFC3339), f.To.Format(time.RFC3339))
	}
	if f.MaxTraces <= 0 {
		f.MaxTraces = 20000
	}
	filter := []any{rangeFilter("timestamp", f.From, f.To)}
	if f.Service != "" {
		filter = append(filter, map[string]any{"term": map[string]any{"services": f.Service}})
	}
	body := map[string]any{
		"query": map[string]any{"bool": map[string]any{"filter": filter}},
		"sort":  newestFirst,
		"_source": []string{"spans.span_id", "spans.trace_parent_id", "spans.service", "spans.role",
			"spans.protocol", "spans.duration_ns", "spans.error", "spans.server_ip", "spans.server_port"},
		"track_total_hits": false,
	}
	indices := s.ix.ForRange(schemas.KindTraces, f.From, f.To)
	acc := newDepAccumulator()
	const page = 1000
	for g.Traces < f.MaxTraces {
		size := min(page, f.MaxTraces-g.Traces)
		body["size"] = size
		res, err := s.Search(ctx, indices, body)
		if err != nil {
			return g, fmt.Errorf("dependencies: %w", err)
		}
		hits := res.Hits.Hits
		for _, h := range hits {
			var t struct {
				Spans []schemas.TraceSpan `json:"spans"`
			}
			if err := json.Unmarshal(h.Source, &t); err != nil {
				return g, fmt.Errorf("dependencies: decode trace %s: %w", h.ID, err)
			}
			acc.add(t.Spans)
		}
		g.Traces += len(hits)
		if len(hits) < size {
			break
		}
		if g.Traces >= f.MaxTraces {
			// Was the cap the end? One more hit says it was not.
			body["size"] = 1
			body["search_after"] = hits[len(hits)-1].Sort
			more, err := s.Search(ctx, indices, body)
			if err != nil {
				return g, fmt.Errorf("dependencies: %w", err)
			}
			g.Sampled = len(more.Hits.Hits) > 0
			break
		}
		body["search_after"] = hits[len(hits)-1].Sort
	}
	g.Edges = acc.edges(f.Service)
	return g, nil
}

// DependencyEdges computes the service-map edges of the given traces'
// spans (see Dependencies).
func DependencyEdges(traces [][]schemas.TraceSpan) []DependencyEdge {
	acc := newDepAccumulator()
	for _, t := range traces {
		acc.add(t)
	}
	return acc.edges("")
}

type edgeKey struct{ parent, child string }

type edgeStats struct {
	errors    int64
	latencies []int64
}

type depAccumulator struct {
	byEdge map[edgeKey]*edgeStats
}

func newDepAccumulator() *depAccumulator {
	return &depAccumulator{byEdge: map[edgeKey]*edgeStats{}}
}

func (a *depAccumulator) call(parent, child string, latency int64, failed bool) {
	k := edgeKey{parent, child}
	e := a.byEdge[k]
	if e == nil {
		e = &edgeStats{}
		a.byEdge[k] = e
	}
	e.latencies = append(e.latencies, latency)
	if failed {
		e.errors++
	}
}

func (a *depAccumulator) add(spans []schemas.TraceSpan) {
	byID := make(map[string]*schemas.TraceSpan, len(spans))
	answered := make(map[string]bool, len(spans))
	for i := range spans {
		byID[spans[i].SpanID] = &spans[i]
		if spans[i].Role == schemas.RoleServer && spans[i].TraceParentID != "" {
			answered[spans[i].TraceParentID] = true
		}
	}
	for i := range spans {
		sp := &spans[i]
		switch sp.Role {
		case schemas.RoleServer:
			p := byID[sp.TraceParentID]
			if p == nil {
				continue
			}
			if p.Role == schemas.RoleClient {
				a.call(p.Service, sp.Service, p.DurationNs, p.Error || sp.Error)
			} else if p.Service != sp.Service {
				a.call(p.Service, sp.Service, sp.DurationNs, sp.Error)
			}
		case schemas.RoleClient:
			if !answered[sp.SpanID] {
				a.call(sp.Service, PeerName(&sp.Span), sp.DurationNs, sp.Error)
			}
		}
	}
}

// PeerName names the callee of a client span whose server end was not
// traced: "protocol://ip:port".
func PeerName(sp *schemas.Span) string {
	return string(sp.Protocol) + "://" + sp.ServerIP + ":" + strconv.Itoa(int(sp.ServerPort))
}

func (a *depAccumulator) edges(service string) []DependencyEdge {
	out := make([]DependencyEdge, 0, len(a.byEdge))
	for k, e := range a.byEdge {
		if service != "" && k.parent != service && k.child != service {
			continue
		}
		slices.Sort(e.latencies)
		n := int64(len(e.latencies))
		out = append(out, DependencyEdge{
			Parent: k.parent, Child: k.child, Calls: n, Errors: e.errors,
			ErrorRate: float64(e.errors) / float64(n),
			P50Ns:     percentile(e.latencies, 0.50), P90Ns: percentile(e.latencies, 0.90),
			P99Ns: percentile(e.latencies, 0.99), MaxNs: e.latencies[n-1],
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Parent != out[j].Parent {
			return out[i].Parent < out[j].Parent
		}
		return out[i].Child < out[j].Child
	})
	return out
}

// percentile is the nearest-rank percentile of sorted values.
func percentile(sorted []int64, p float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p*float64(len(sorted))+0.999999999) - 1
	return sorted[max(0, min(rank, len(sorted)-1))]
}
