package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

func testSpan(i int, at time.Time) schemas.Span {
	s := schemas.Span{
		Role: schemas.RoleServer, Protocol: schemas.ProtocolHTTP1,
		Operation: fmt.Sprintf("GET /items/%d", i%3), Method: "GET", StatusCode: 200,
		StartNs: at.UnixNano(), EndNs: at.UnixNano() + int64(time.Millisecond),
		PID: 42, TID: 43, Process: "svc", Service: fmt.Sprintf("svc-%d", i%2), Host: "h1",
		Conn: schemas.Conn{ClientIP: "127.0.0.1", ClientPort: uint16(30000 + i), ServerIP: "127.0.0.1", ServerPort: 8080},
		Seq:  uint64(i), ReqTCPSeq: uint32(i * 100),
		Tags: map[string]string{"http.status_code": "200"},
	}
	s.SpanID = schemas.SpanID(s.Host, s.Conn, s.Seq, s.ReqTCPSeq, s.Role)
	s.IngestedAt = time.Now().UTC()
	s.Finish()
	return s
}

func write(t *testing.T, s *store.Store, spans []schemas.Span) store.BulkResult {
	t.Helper()
	var docs []store.Doc
	for i := range spans {
		d, err := store.SpanDoc(s.Indices(), &spans[i])
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, d)
	}
	res, err := s.Bulk(context.Background(), docs, "true")
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// Spans land in the hourly index of their start and read back across an
// hour boundary, in time order, paging through more than one page.
func TestSpansHourlyAndRangeAcrossHour(t *testing.T) {
	s := testenv.Store(t)
	ctx := context.Background()
	base := time.Date(2026, 11, 25, 10, 59, 0, 0, time.UTC)
	var spans []schemas.Span
	for i := 0; i < 250; i++ {
		spans = append(spans, testSpan(i, base.Add(time.Duration(i)*time.Second))) // 10:59:00 .. 11:03:09
	}
	res := write(t, s, spans)
	if res.Indexed != 250 || len(res.Failed) != 0 {
		t.Fatalf("indexed %d, failed %v", res.Indexed, res.Failed)
	}
	infos, err := s.ListIndices(ctx, s.Indices().Pattern(schemas.KindSpans))
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]string{}
	for _, i := range infos {
		counts[i.Name] = i.DocsCount
	}
	h10 := s.Indices().Name(schemas.KindSpans, base)
	h11 := s.Indices().Name(schemas.KindSpans, base.Add(time.Minute))
	if len(counts) != 2 || counts[h10] != "60" || counts[h11] != "190" {
		t.Fatalf("indices %v, want %s=60 %s=190", counts, h10, h11)
	}

	got, err := s.Spans(ctx, store.Query{From: base.Add(30 * time.Second), To: base.Add(90 * time.Second), PageSize: 7})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 61 {
		t.Fatalf("range read %d spans, want 61", len(got))
	}
	for i := range got {
		if want := spans[30+i].SpanID; got[i].SpanID != want {
			t.Fatalf("span %d is %s, want %s (order or paging broken)", i, got[i].SpanID, want)
		}
	}
	if got[0].Tags["http.status_code"] != "200" || got[0].ClientPort != 30030 {
		t.Fatalf("fields lost: %+v", got[0])
	}

	n, err := s.Count(ctx, store.Query{Kind: schemas.KindSpans, From: base, To: base.Add(time.Hour),
		Terms: map[string][]any{"service": {"svc-1"}}})
	if err != nil || n != 125 {
		t.Fatalf("count svc-1 = %d, %v; want 125", n, err)
	}
	limited, err := s.Spans(ctx, store.Query{From: base, To: base.Add(time.Hour), Limit: 10, PageSize: 3})
	if err != nil || len(limited) != 10 {
		t.Fatalf("limit 10 gave %d, %v", len(limited), err)
	}
	// Rewriting the same spans overwrites them: ids are stable.
	write(t, s, spans[:50])
	if n, _ := s.Count(ctx, store.Query{Kind: schemas.KindSpans, From: base, To: base.Add(time.Hour)}); n != 250 {
		t.Fatalf("after rewrite %d docs, want 250", n)
	}
}

// A document the engine refuses is reported with its reason and counted,
// and the good documents of the same batch are stored.
func TestRejectedDocumentReported(t *testing.T) {
	s := testenv.Store(t)
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	good := testSpan(1, at)
	gd, _ := store.SpanDoc(s.Indices(), &good)
	bad := store.Doc{Index: gd.Index, ID: "bad", Body: []byte(`{"span_id":"bad","timestamp":"2026-11-25T12:00:00Z","start_ns":"not a number"}`)}
	res, err := s.Bulk(context.Background(), []store.Doc{gd, bad}, "true")
	if err != nil {
		t.Fatal(err)
	}
	if res.Indexed != 1 || len(res.Failed) != 1 {
		t.Fatalf("indexed %d failed %d, want 1 and 1", res.Indexed, len(res.Failed))
	}
	f := res.Failed[0]
	if f.Doc.ID != "bad" || f.Status != 400 || f.Type == "" || f.Retriable() {
		t.Fatalf("failure %+v, want a non-retriable 400 for doc bad", f)
	}
}

// The templates map ids as keywords: a terms aggregation returns whole
// values, not analysed tokens.
func TestTemplateKeywordAggregates(t *testing.T) {
	s := testenv.Store(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 25, 13, 0, 0, 0, time.UTC)
	var spans []schemas.Span
	for i := 0; i < 6; i++ {
		spans = append(spans, testSpan(i, at.Add(time.Duration(i)*time.Second)))
	}
	write(t, s, spans)
	res, err := s.Search(ctx, s.Indices().ForRange(schemas.KindSpans, at, at), map[string]any{
		"size": 0,
		"aggs": map[string]any{"ops": map[string]any{"terms": map[string]any{"field": "operation"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var aggs struct {
		Ops struct {
			Buckets []struct {
				Key   string `json:"key"`
				Count int    `json:"doc_count"`
			} `json:"buckets"`
		} `json:"ops"`
	}
	if err := json.Unmarshal(res.Aggregations, &aggs); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, b := range aggs.Ops.Buckets {
		keys = append(keys, fmt.Sprintf("%s=%d", b.Key, b.Count))
	}
	sort.Strings(keys)
	want := []string{"GET /items/0=2", "GET /items/1=2", "GET /items/2=2"}
	if fmt.Sprint(keys) != fmt.Sprint(want) {
		t.Fatalf("operation buckets %v, want %v", keys, want)
	}
}

// Listing indices for a range and deleting them (retention's primitive).
func TestListAndDeleteIndices(t *testing.T) {
	s := testenv.Store(t)
	ctx := context.Background()
	day := time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)
	var spans []schemas.Span
	for h := 0; h < 3; h++ {
		spans = append(spans, testSpan(h, day.Add(time.Duration(h)*time.Hour)))
	}
	write(t, s, spans)
	infos, err := s.ListIndices(ctx, s.Indices().Pattern(schemas.KindSpans))
	if err != nil || len(infos) != 3 {
		t.Fatalf("list: %v %v", infos, err)
	}
	var names []string
	for _, i := range infos {
		names = append(names, i.Name)
	}
	old := s.Indices().Expired(names, schemas.KindSpans, day.Add(2*time.Hour))
	if len(old) != 2 {
		t.Fatalf("expired %v", old)
	}
	if err := s.DeleteIndices(ctx, old...); err != nil {
		t.Fatal(err)
	}
	infos, _ = s.ListIndices(ctx, s.Indices().Pattern(schemas.KindSpans))
	if len(infos) != 1 || infos[0].Name != s.Indices().Name(schemas.KindSpans, day.Add(2*time.Hour)) {
		t.Fatalf("after delete: %v", infos)
	}
}

// A dead engine is an error naming the operation, and a write to it is
// reported as retriable, never lost in silence.
func TestDeadEngine(t *testing.T) {
	s, err := store.Open(store.Config{URLs: []string{"http://127.0.0.1:1"}, Engine: store.EngineOpenSearch, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := s.Ping(ctx); err == nil || !store.IsUnavailable(err) {
		t.Fatalf("ping of a dead engine: %v, want an error that IsUnavailable", err)
	}
	now := time.Now()
	if _, err := s.SearchTraces(ctx, store.TraceFilter{From: now.Add(-time.Hour), To: now}, false); !store.IsUnavailable(err) {
		t.Fatalf("search of a dead engine: %v, want an error that IsUnavailable", err)
	}
	sp := testSpan(1, time.Now())
	d, _ := store.SpanDoc(s.Indices(), &sp)
	res, err := s.Bulk(ctx, []store.Doc{d}, "")
	if err != nil {
		t.Fatal(err)
	}
	if res.Indexed != 0 || len(res.Failed) != 1 || !res.Failed[0].Retriable() {
		t.Fatalf("dead engine result %+v", res)
	}
}

func TestConfigValidate(t *testing.T) {
	cases := map[string]store.Config{
		"es-url":      {Engine: store.EngineOpenSearch},
		"http://":     {URLs: []string{"localhost:9200"}, Engine: store.EngineOpenSearch},
		"es-engine":   {URLs: []string{"http://x"}, Engine: "zinc"},
		"es-prefix":   {URLs: []string{"http://x"}, Engine: store.EngineOpenSearch, Prefix: "Bad Prefix"},
		"es-password": {URLs: []string{"http://x"}, Engine: store.EngineOpenSearch, Username: "u"},
	}
	for want, c := range cases {
		err := c.Validate()
		if err == nil || !contains(err.Error(), want) {
			t.Errorf("config %+v: error %v, want one naming %q", c, err, want)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// Only answers that say "later" are unavailability; a refused request is
// the request's fault, and a deadline is the caller's.
func TestIsUnavailable(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&store.ResponseError{Op: "search", Status: 503}, true},
		{fmt.Errorf("trace search: %w", &store.ResponseError{Op: "search", Status: 429}), true},
		{&store.ResponseError{Op: "search", Status: 400}, false},
		{&store.ResponseError{Op: "search", Status: 500}, false},
		{context.DeadlineExceeded, false},
		{errors.New("decode"), false},
	} {
		if got := store.IsUnavailable(c.err); got != c.want {
			t.Errorf("IsUnavailable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
