package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/deeptrace/deeptrace/schemas"
)

// Query selects documents of one kind in a time range. Filters are exact
// matches: a field and the values any of which it may hold.
type Query struct {
	Kind     schemas.Kind
	From, To time.Time
	// Terms maps a field to the values it may hold (OR within a field,
	// AND across fields).
	Terms map[string][]any
	// Ranges maps a numeric field to inclusive bounds; a nil bound is open.
	Ranges map[string][2]any
	// Exists lists fields that must be present.
	Exists []string
	// TimeField is the date field the range applies to ("timestamp" when
	// empty).
	TimeField string
	// Sort orders the results; the last key must be unique so that paging
	// with search_after is exact. Defaults to timestamp then the kind's id.
	Sort []SortKey
	// PageSize is the documents per request (default 1000, at most 10000).
	PageSize int
	// Limit stops after this many documents (0: all).
	Limit int
}

// SortKey is one sort field and its direction.
type SortKey struct {
	Field string
	Desc  bool
}

func idField(k schemas.Kind) string {
	switch k {
	case schemas.KindSpans:
		return "span_id"
	case schemas.KindTraces:
		return "trace_id"
	}
	return "_id"
}

// body renders the query's search body (without paging).
func (q *Query) body() map[string]any {
	tf := q.TimeField
	if tf == "" {
		tf = "timestamp"
	}
	filter := []any{map[string]any{"range": map[string]any{tf: map[string]any{
		"gte": q.From.UTC().Format(time.RFC3339Nano), "lte": q.To.UTC().Format(time.RFC3339Nano),
	}}}}
	for f, vals := range q.Terms {
		filter = append(filter, map[string]any{"terms": map[string]any{f: vals}})
	}
	for f, b := range q.Ranges {
		r := map[string]any{}
		if b[0] != nil {
			r["gte"] = b[0]
		}
		if b[1] != nil {
			r["lte"] = b[1]
		}
		filter = append(filter, map[string]any{"range": map[string]any{f: r}})
	}
	for _, f := range q.Exists {
		filter = append(filter, map[string]any{"exists": map[string]any{"field": f}})
	}
	sortKeys := q.Sort
	if len(sortKeys) == 0 {
		sortKeys = []SortKey{{Field: tf}, {Field: idField(q.Kind)}}
	}
	var sorts []any
	for _, s := range sortKeys {
		order := "asc"
		if s.Desc {
			order = "desc"
		}
		sorts = append(sorts, map[string]any{s.Field: map[string]any{"order": order}})
	}
	return map[string]any{
		"query":            map[string]any{"bool": map[string]any{"filter": filter}},
		"sort":             sorts,
		"track_total_hits": false,
	}
}

// Hit is one search result: its index, id and source.
type Hit struct {
	Index  string          `json:"_index"`
	ID     string          `json:"_id"`
	Source json.RawMessage `json:"_source"`
	Sort   []any           `json:"sort"`
}

// Scan runs q and calls fn with each page of hits, paging with search_after
// until the range is exhausted or Limit is reached. It names only the
// indices q's range touches; missing ones are skipped.
func (s *Store) Scan(ctx context.Context, q Query, fn func([]Hit) error) error {
	if q.To.Before(q.From) {
		return fmt.Errorf("query %s: range end %s before start %s", q.Kind, q.To, q.From)
	}
	indices := s.ix.ForRange(q.Kind, q.From, q.To)
	page := q.PageSize
	if page <= 0 {
		page = 1000
	}
	if page > 10000 {
		page = 10000
	}
	body := q.body()
	seen := 0
	for {
		size := page
		if q.Limit > 0 && q.Limit-seen < size {
			size = q.Limit - seen
		}
		body["size"] = size
		res, err := s.Search(ctx, indices, body)
		if err != nil {
			return fmt.Errorf("query %s %s..%s: %w", q.Kind, q.From.Format(time.RFC3339), q.To.Format(time.RFC3339), err)
		}
		hits := res.Hits.Hits
		if len(hits) == 0 {
			return nil
		}
		if err := fn(hits); err != nil {
			return err
		}
		seen += len(hits)
		if len(hits) < size || (q.Limit > 0 && seen >= q.Limit) {
			return nil
		}
		body["search_after"] = hits[len(hits)-1].Sort
	}
}

// Search runs a raw _search body over the given indices (missing ones
// ignored) and returns the decoded response.
func (s *Store) Search(ctx context.Context, indices []string, body any) (*SearchResult, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode search: %w", err)
	}
	req := esapi.SearchRequest{
		Index:             indices,
		Body:              bytes.NewReader(b),
		IgnoreUnavailable: esapi.BoolPtr(true),
		AllowNoIndices:    esapi.BoolPtr(true),
	}
	res, err := req.Do(ctx, s.es)
	var out SearchResult
	if err := decode(res, err, "search "+strings.Join(indices, ","), &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// SearchResult is a decoded _search response.
type SearchResult struct {
	Hits struct {
		Hits []Hit `json:"hits"`
	} `json:"hits"`
	Aggregations json.RawMessage `json:"aggregations"`
}

// skippedSpanDocs counts span documents Spans could not decode.
var skippedSpanDocs atomic.Uint64

// SkippedSpanDocuments is how many span documents Spans skipped because
// they do not decode as a span (numbers stored as strings, wrong shapes).
func SkippedSpanDocuments() uint64 { return skippedSpanDocs.Load() }

// Spans returns every span q selects (q.Kind is set to spans). A document
// that does not decode as a span is skipped and counted
// (SkippedSpanDocuments): one bogus document must not fail a whole window's
// assembly, and with it every retry (faults issue #12).
func (s *Store) Spans(ctx context.Context, q Query) ([]schemas.Span, error) {
	q.Kind = schemas.KindSpans
	var out []schemas.Span
	err := s.Scan(ctx, q, func(hits []Hit) error {
		for _, h := range hits {
			var sp schemas.Span
			if err := json.Unmarshal(h.Source, &sp); err != nil {
				skippedSpanDocs.Add(1)
				continue
			}
			out = append(out, sp)
		}
		return nil
	})
	return out, err
}

// Count counts the documents q selects.
func (s *Store) Count(ctx context.Context, q Query) (int64, error) {
	body := q.body()
	b, err := json.Marshal(map[string]any{"query": body["query"]})
	if err != nil {
		return 0, err
	}
	req := esapi.CountRequest{
		Index:             s.ix.ForRange(q.Kind, q.From, q.To),
		Body:              bytes.NewReader(b),
		IgnoreUnavailable: esapi.BoolPtr(true),
		AllowNoIndices:    esapi.BoolPtr(true),
	}
	res, err := req.Do(ctx, s.es)
	var out struct {
		Count int64 `json:"count"`
	}
	if err := decode(res, err, "count "+string(q.Kind), &out); err != nil {
		return 0, err
	}
	return out.Count, nil
}
