package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
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
	return s.pages(ctx, q, func(raw []byte) (int, any, error) {
		var res SearchResult
		if err := json.Unmarshal(raw, &res); err != nil {
			return 0, nil, fmt.Errorf("decode response: %w", err)
		}
		hits := res.Hits.Hits
		if len(hits) == 0 {
			return 0, nil, nil
		}
		return len(hits), hits[len(hits)-1].Sort, fn(hits)
	})
}

// pages runs q a page at a time: page decodes one response body and
// returns how many hits it held and the last one's sort values. The body
// is only valid during the call.
func (s *Store) pages(ctx context.Context, q Query, page func(raw []byte) (int, any, error)) error {
	if q.To.Before(q.From) {
		return fmt.Errorf("query %s: range end %s before start %s", q.Kind, q.To, q.From)
	}
	indices := s.ix.ForRange(q.Kind, q.From, q.To)
	size := q.PageSize
	if size <= 0 {
		size = 1000
	}
	if size > 10000 {
		size = 10000
	}
	body := q.body()
	var buf bytes.Buffer
	seen := 0
	for {
		n := size
		if q.Limit > 0 && q.Limit-seen < n {
			n = q.Limit - seen
		}
		body["size"] = n
		err := s.searchInto(ctx, indices, body, &buf)
		var got int
		var last any
		if err == nil {
			got, last, err = page(buf.Bytes())
		}
		if err != nil {
			return fmt.Errorf("query %s %s..%s: %w", q.Kind, q.From.Format(time.RFC3339), q.To.Format(time.RFC3339), err)
		}
		seen += got
		if got < n || (q.Limit > 0 && seen >= q.Limit) {
			return nil
		}
		body["search_after"] = last
	}
}

// Search runs a raw _search body over the given indices (missing ones
// ignored) and returns the decoded response.
func (s *Store) Search(ctx context.Context, indices []string, body any) (*SearchResult, error) {
	var buf bytes.Buffer
	if err := s.searchInto(ctx, indices, body, &buf); err != nil {
		return nil, err
	}
	var out SearchResult
	if err := json.Unmarshal(buf.Bytes(), &out); err != nil {
		return nil, fmt.Errorf("search %s: decode response: %w", strings.Join(indices, ","), err)
	}
	return &out, nil
}

// searchInto runs a _search and reads the response body into buf
// (reset first).
func (s *Store) searchInto(ctx context.Context, indices []string, body any, buf *bytes.Buffer) error {
	op := "search " + strings.Join(indices, ",")
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("%s: encode: %w", op, err)
	}
	req := esapi.SearchRequest{
		Index:             indices,
		Body:              bytes.NewReader(b),
		IgnoreUnavailable: esapi.BoolPtr(true),
		AllowNoIndices:    esapi.BoolPtr(true),
	}
	res, err := req.Do(ctx, s.es)
	if err := check(res, err, op); err != nil {
		return err
	}
	defer res.Body.Close()
	buf.Reset()
	if _, err := buf.ReadFrom(res.Body); err != nil {
		return fmt.Errorf("%s: read response: %w", op, err)
	}
	return nil
}

// SearchResult is a decoded _search response.
type SearchResult struct {
	Hits struct {
		Hits []Hit `json:"hits"`
	} `json:"hits"`
	Aggregations json.RawMessage `json:"aggregations"`
}

// spanPage is a _search response whose hits decode straight into spans,
// in one pass over the body instead of one for the response and another
// for each hit's source.
type spanPage struct {
	Hits struct {
		Hits []struct {
			Source schemas.Span    `json:"_source"`
			Sort   json.RawMessage `json:"sort"`
		} `json:"hits"`
	} `json:"hits"`
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
	return s.AppendSpans(ctx, q, nil)
}

// AppendSpans is Spans appending to dst, for readers that gather spans
// from many queries into one slice.
func (s *Store) AppendSpans(ctx context.Context, q Query, dst []schemas.Span) ([]schemas.Span, error) {
	q.Kind = schemas.KindSpans
	out := dst
	err := s.pages(ctx, q, func(raw []byte) (int, any, error) {
		var page spanPage
		if err := json.Unmarshal(raw, &page); err != nil {
			// Some document is not a span (or the response is broken,
			// which the second decoding reports); sort them out one by
			// one.
			return spansOneByOne(raw, &out)
		}
		hits := page.Hits.Hits
		if len(hits) == 0 {
			return 0, nil, nil
		}
		out = slices.Grow(out, len(hits))
		for i := range hits {
			out = append(out, hits[i].Source)
		}
		return len(hits), hits[len(hits)-1].Sort, nil
	})
	return out, err
}

// spansOneByOne decodes a page hit by hit, skipping and counting the
// documents that are not spans.
func spansOneByOne(raw []byte, out *[]schemas.Span) (int, any, error) {
	var res SearchResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return 0, nil, fmt.Errorf("decode response: %w", err)
	}
	hits := res.Hits.Hits
	for _, h := range hits {
		var sp schemas.Span
		if err := json.Unmarshal(h.Source, &sp); err != nil {
			skippedSpanDocs.Add(1)
			continue
		}
		*out = append(*out, sp)
	}
	if len(hits) == 0 {
		return 0, nil, nil
	}
	return len(hits), hits[len(hits)-1].Sort, nil
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
