package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/elastic/go-elasticsearch/v8/esutil"

	"github.com/deeptrace/deeptrace/schemas"
)

// Doc is one document to index: where, under which id, and its JSON.
type Doc struct {
	Index string
	ID    string
	Body  []byte
}

// SpanDoc renders a span as the document of its hourly index. The id is the
// span id, so rewriting the same span overwrites it.
func SpanDoc(ix schemas.Indices, s *schemas.Span) (Doc, error) {
	body, err := json.Marshal(s)
	if err != nil {
		return Doc{}, fmt.Errorf("encode span %s: %w", s.SpanID, err)
	}
	return Doc{Index: ix.Name(schemas.KindSpans, s.Start()), ID: s.SpanID, Body: body}, nil
}

// TraceDoc renders a trace as the document of its daily index.
func TraceDoc(ix schemas.Indices, t *schemas.Trace) (Doc, error) {
	body, err := json.Marshal(t)
	if err != nil {
		return Doc{}, fmt.Errorf("encode trace %s: %w", t.TraceID, err)
	}
	return Doc{Index: ix.Name(schemas.KindTraces, t.Timestamp), ID: t.TraceID, Body: body}, nil
}

// ItemError is the engine's refusal of one document.
type ItemError struct {
	Doc    Doc
	Status int
	Type   string
	Reason string
	// Err is set when the request carrying the document failed as a
	// whole (engine unreachable); Status is then 0.
	Err error
}

// Retriable reports whether writing the document again later may succeed:
// the engine was unreachable, overloaded or failing, rather than refusing
// the document itself.
func (e ItemError) Retriable() bool {
	return e.Err != nil || e.Status == http.StatusTooManyRequests || e.Status >= 500
}

func (e ItemError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("index %s/%s: %v", e.Doc.Index, e.Doc.ID, e.Err)
	}
	return fmt.Sprintf("index %s/%s: %d %s: %s", e.Doc.Index, e.Doc.ID, e.Status, e.Type, e.Reason)
}

// WriterConfig tunes a Writer.
type WriterConfig struct {
	// Workers is the number of concurrent bulk requests (default 2).
	Workers int
	// FlushBytes flushes a worker's batch at this size (default 5 MiB).
	FlushBytes int
	// FlushInterval flushes at least this often (default 1 s).
	FlushInterval time.Duration
	// Refresh is the bulk refresh parameter ("", "true", "wait_for").
	Refresh string
	// OnError receives every document that was not indexed. It runs on the
	// writer's goroutines and must not block for long. Retriable errors are
	// the caller's to spool; the others are counted as rejected.
	OnError func(ItemError)
}

// WriterStats counts a Writer's outcomes.
type WriterStats struct {
	Added, Indexed, Rejected, Retriable uint64
	Requests                            uint64
}

// Writer batches documents into _bulk requests through esutil.BulkIndexer.
// Every document ends indexed or reported to OnError: none is dropped
// silently.
type Writer struct {
	bi                                    esutil.BulkIndexer
	cfg                                   WriterConfig
	added, indexed, rejected, retriableCt atomic.Uint64
}

// NewWriter starts a bulk writer. Close it to flush and stop.
func (s *Store) NewWriter(cfg WriterConfig) (*Writer, error) {
	if cfg.Workers <= 0 {
		cfg.Workers = 2
	}
	if cfg.FlushBytes <= 0 {
		cfg.FlushBytes = 5 << 20
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = time.Second
	}
	w := &Writer{cfg: cfg}
	bi, err := esutil.NewBulkIndexer(esutil.BulkIndexerConfig{
		Client:        s.es,
		NumWorkers:    cfg.Workers,
		FlushBytes:    cfg.FlushBytes,
		FlushInterval: cfg.FlushInterval,
		Refresh:       cfg.Refresh,
		Timeout:       s.cfg.Timeout,
		// Item-level failures arrive through OnFailure; OnError sees only
		// failures the indexer cannot tie to an item.
		OnError: func(_ context.Context, err error) {},
	})
	if err != nil {
		return nil, fmt.Errorf("bulk indexer: %w", err)
	}
	w.bi = bi
	return w, nil
}

// Add queues one document. It blocks while the workers' queues are full.
func (w *Writer) Add(ctx context.Context, d Doc) error {
	w.added.Add(1)
	return w.bi.Add(ctx, esutil.BulkIndexerItem{
		Index:      d.Index,
		Action:     "index",
		DocumentID: d.ID,
		Body:       bytes.NewReader(d.Body),
		OnSuccess: func(context.Context, esutil.BulkIndexerItem, esutil.BulkIndexerResponseItem) {
			w.indexed.Add(1)
		},
		OnFailure: func(_ context.Context, _ esutil.BulkIndexerItem, r esutil.BulkIndexerResponseItem, err error) {
			ie := ItemError{Doc: d, Status: r.Status, Type: r.Error.Type, Reason: r.Error.Reason, Err: err}
			if ie.Err == nil && ie.Status == 0 {
				ie.Err = fmt.Errorf("no status in bulk response")
			}
			if ie.Retriable() {
				w.retriableCt.Add(1)
			} else {
				w.rejected.Add(1)
			}
			if w.cfg.OnError != nil {
				w.cfg.OnError(ie)
			}
		},
	})
}

// Flush sends what is queued and waits for the answers.
func (w *Writer) Flush(ctx context.Context) error { return w.bi.Flush(ctx) }

// Close flushes and stops the writer.
func (w *Writer) Close(ctx context.Context) error { return w.bi.Close(ctx) }

// Stats returns the writer's counters.
func (w *Writer) Stats() WriterStats {
	return WriterStats{
		Added: w.added.Load(), Indexed: w.indexed.Load(),
		Rejected: w.rejected.Load(), Retriable: w.retriableCt.Load(),
		Requests: w.bi.Stats().NumRequests,
	}
}

// BulkResult is the outcome of a synchronous Bulk call.
type BulkResult struct {
	Indexed int
	Failed  []ItemError
}

// Bulk writes docs and waits for every outcome. The error is non-nil only
// when the writer itself could not run; per-document failures are in
// Failed.
func (s *Store) Bulk(ctx context.Context, docs []Doc, refresh string) (BulkResult, error) {
	var mu sync.Mutex
	var res BulkResult
	w, err := s.NewWriter(WriterConfig{Workers: 1, Refresh: refresh, OnError: func(e ItemError) {
		mu.Lock()
		res.Failed = append(res.Failed, e)
		mu.Unlock()
	}})
	if err != nil {
		return res, err
	}
	for _, d := range docs {
		if err := w.Add(ctx, d); err != nil {
			_ = w.Close(ctx)
			return res, fmt.Errorf("bulk add %s/%s: %w", d.Index, d.ID, err)
		}
	}
	if err := w.Close(ctx); err != nil {
		return res, fmt.Errorf("bulk close: %w", err)
	}
	res.Indexed = int(w.Stats().Indexed)
	return res, nil
}
