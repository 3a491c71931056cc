package worker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
	"github.com/deeptrace/deeptrace/worker/assemble/assembletest"
)

// Bogus documents in a window's span index (not spans at all, spans with
// fields missing, fields of the wrong JSON type that the engine's mapping
// coerced but _source keeps as sent): the window's good traces are still
// assembled, whole and exactly once, and the task does not fail for ever.
func TestBogusSpanDocumentsAreSkipped(t *testing.T) {
	es := testenv.Store(t)
	w := newWorker(t, es)
	from := time.Now().UTC().Add(-time.Hour).Truncate(win)
	set := assembletest.Generate(assembletest.Config{Traces: 100, Start: from, Spacing: 10 * time.Millisecond, Seed: 5})
	writeSpans(t, es, set.Spans)

	at := from.Add(300 * time.Millisecond)
	ts := at.Format(time.RFC3339Nano)
	ns := at.UnixNano()
	bogus := []string{
		// Not a span: only a timestamp in the window.
		fmt.Sprintf(`{"timestamp":%q}`, ts),
		// A span without id, role, connection or end.
		fmt.Sprintf(`{"timestamp":%q,"start_ns":%d,"service":"ghost","operation":"GET /x"}`, ts, ns),
		// Numbers sent as strings: the mapping coerces them, _source keeps strings.
		fmt.Sprintf(`{"timestamp":%q,"span_id":"bogus-strings","start_ns":"%d","end_ns":"%d","seq":"7","role":"server","service":"ghost"}`, ts, ns, ns+1000),
		// An end before the start, a negative duration, a huge seq.
		fmt.Sprintf(`{"timestamp":%q,"span_id":"bogus-times","start_ns":%d,"end_ns":%d,"duration_ns":-5,"seq":18446744073709551615,"role":"client","service":"ghost","client_ip":"10.9.9.9","client_port":1,"server_ip":"10.9.9.8","server_port":2}`, ts, ns, ns-1000),
		// A date as epoch milliseconds, as the mapping allows: not a
		// time.Time to Go.
		fmt.Sprintf(`{"timestamp":%d,"span_id":"bogus-epoch","start_ns":%d,"end_ns":%d,"role":"server","service":"ghost"}`, at.UnixMilli(), ns, ns+1000),
		// A client span that ends a second before it starts: the lookup of
		// its server span must not ask the engine for an inverted range.
		fmt.Sprintf(`{"timestamp":%q,"span_id":"bogus-backwards","start_ns":%d,"end_ns":%d,"role":"client","service":"ghost","client_ip":"10.9.9.7","client_port":3,"server_ip":"10.9.9.6","server_port":4,"req_tcp_seq":5,"resp_tcp_seq":6}`, ts, ns, ns-int64(time.Second)),
		// A parent that does not exist and a self-parent.
		fmt.Sprintf(`{"timestamp":%q,"span_id":"bogus-self","parent_span_id":"bogus-self","start_ns":%d,"end_ns":%d,"role":"client","service":"ghost"}`, ts, ns, ns+10),
	}
	index := es.Indices().Name(schemas.KindSpans, at)
	var docs []store.Doc
	accepted := 0
	for i, b := range bogus {
		docs = append(docs, store.Doc{Index: index, ID: fmt.Sprintf("bogus-%d", i), Body: []byte(b)})
	}
	res, err := es.Bulk(context.Background(), docs, "true")
	if err != nil {
		t.Fatal(err)
	}
	accepted = len(docs) - len(res.Failed)
	t.Logf("the engine took %d of %d bogus documents (refused: %v)", accepted, len(docs), res.Failed)

	skipped := store.SkippedSpanDocuments()
	n := 0
	var errs []string
	for sh := 0; sh < shards; sh++ {
		p := jobs.AssemblePayload{WindowStart: from, WindowEnd: from.Add(win), Shard: sh, Shards: shards, Margin: margin}
		r, err := w.Assemble(context.Background(), p)
		if err != nil {
			errs = append(errs, fmt.Sprintf("shard %d: %v", sh, err))
			continue
		}
		n += r.Traces
	}
	if len(errs) > 0 {
		t.Fatalf("assembly failed on bogus documents instead of skipping them:\n%s", strings.Join(errs, "\n"))
	}
	got := readTraces(t, es, from.Add(-time.Minute), from.Add(time.Minute))
	// Only the traces rooted in this window are asserted; bogus spans may
	// become traces of their own, which must not hide or break good ones.
	want := map[string]bool{}
	for _, r := range set.Roots {
		want[schemas.TraceID(r)] = true
	}
	for _, r := range set.Roots {
		tr, ok := got[schemas.TraceID(r)]
		if !ok {
			continue // rooted in a later window, not assembled here
		}
		if err := set.CheckTrace(&tr); err != nil {
			t.Error(err)
		}
	}
	if n == 0 {
		t.Fatal("no trace assembled beside the bogus documents")
	}
	if store.SkippedSpanDocuments() == skipped {
		t.Error("the undecodable document was not counted (store.SkippedSpanDocuments)")
	}
}

// Task payloads that are not assembly payloads (garbage, JSON of the wrong
// shape, an inverted window, a shard out of range) are refused with an
// error that says so and asynq's SkipRetry, so the task is archived at
// once instead of retried; nothing crashes.
func TestMalformedTaskPayloadsAreArchived(t *testing.T) {
	es := testenv.Store(t)
	w := newWorker(t, es)
	now := time.Now().UTC().Truncate(time.Minute)
	payloads := map[string][]byte{
		"garbage":        []byte("\x00\xff not json"),
		"empty":          nil,
		"array":          []byte(`[1,2,3]`),
		"wrong types":    []byte(`{"window_start":"yesterday","shard":"one"}`),
		"huge":           []byte(`{"pad":"` + strings.Repeat("A", 1<<20) + `"}`),
		"inverted":       mustJSON(t, jobs.AssemblePayload{WindowStart: now, WindowEnd: now.Add(-time.Minute), Shards: 4}),
		"shard too high": mustJSON(t, jobs.AssemblePayload{WindowStart: now, WindowEnd: now.Add(time.Minute), Shard: 9, Shards: 4}),
		"no shards":      mustJSON(t, jobs.AssemblePayload{WindowStart: now, WindowEnd: now.Add(time.Minute), Shard: 0, Shards: 0}),
	}
	for name, b := range payloads {
		t.Run(name, func(t *testing.T) {
			var err error
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Fatalf("panic on %s payload: %v", name, r)
					}
				}()
				err = w.ProcessTask(context.Background(), asynq.NewTask(jobs.TypeAssemble, b))
			}()
			if err == nil {
				t.Fatalf("%s payload accepted", name)
			}
			if !strings.Contains(err.Error(), asynq.SkipRetry.Error()) {
				t.Errorf("%s payload: %v, want asynq.SkipRetry (archive, no retry)", name, err)
			}
			if len(err.Error()) > 2000 {
				t.Errorf("%s payload: the error is %d bytes long (echoes the payload?)", name, len(err.Error()))
			}
		})
	}
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
