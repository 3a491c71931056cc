package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
	"github.com/deeptrace/deeptrace/worker"
	"github.com/deeptrace/deeptrace/worker/assemble/assembletest"
)

// writeSpans stores spans as the exporter would, searchable at once.
func writeSpans(t testing.TB, es *store.Store, spans []schemas.Span) {
	t.Helper()
	testenv.WriteSpans(t, es, spans)
}

// readTraces returns every trace document in [from, to] by id, failing on
// a duplicate id.
func readTraces(t testing.TB, es *store.Store, from, to time.Time) map[string]schemas.Trace {
	t.Helper()
	ctx := context.Background()
	if err := es.Refresh(ctx, es.Indices().Pattern(schemas.KindTraces)); err != nil {
		t.Fatal(err)
	}
	out := map[string]schemas.Trace{}
	err := es.Scan(ctx, store.Query{Kind: schemas.KindTraces, From: from, To: to, PageSize: 500}, func(hits []store.Hit) error {
		for _, h := range hits {
			var tr schemas.Trace
			if err := json.Unmarshal(h.Source, &tr); err != nil {
				return err
			}
			if _, dup := out[tr.TraceID]; dup {
				return fmt.Errorf("trace %s stored twice", tr.TraceID)
			}
			out[tr.TraceID] = tr
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkAll asserts that the engine holds exactly the set's traces, each
// with the right tree.
func checkAll(t testing.TB, set *assembletest.Set, got map[string]schemas.Trace) {
	t.Helper()
	want := map[string]bool{}
	for _, r := range set.Roots {
		want[schemas.TraceID(r)] = true
	}
	for id, tr := range got {
		if !want[id] {
			t.Errorf("unexpected trace %s rooted at %s (%d spans): a fragment", id, tr.RootSpanID, len(tr.Spans))
			continue
		}
		if err := set.CheckTrace(&tr); err != nil {
			t.Error(err)
		}
	}
	missing := 0
	for id := range want {
		if _, ok := got[id]; !ok {
			missing++
		}
	}
	if missing > 0 || len(got) != len(want) {
		t.Fatalf("%d traces stored, %d expected, %d missing", len(got), len(want), missing)
	}
}

const (
	win    = 2 * time.Second
	margin = time.Second
	shards = 4
)

func runAll(t testing.TB, w *worker.Worker, from time.Time, windows, gen int) (traces int) {
	t.Helper()
	for k := 0; k < windows; k++ {
		for sh := 0; sh < shards; sh++ {
			p := jobs.AssemblePayload{WindowStart: from.Add(time.Duration(k) * win), WindowEnd: from.Add(time.Duration(k+1) * win),
				Shard: sh, Shards: shards, Margin: margin, Generation: gen}
			res, err := w.Assemble(context.Background(), p)
			if err != nil {
				t.Fatalf("assemble %s: %v", p.TaskID(), err)
			}
			traces += res.Traces
		}
	}
	return traces
}

func newWorker(t testing.TB, es *store.Store) *worker.Worker {
	t.Helper()
	w, err := worker.New(worker.Config{}, es, testenv.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// Every trace of three windows is written exactly once, whole, by the
// task owning its root, including traces that cross a window's end; a
// rerun overwrites instead of duplicating.
func TestAssembleWindowsExactlyOnce(t *testing.T) {
	es := testenv.Store(t)
	w := newWorker(t, es)
	from := time.Now().UTC().Add(-time.Hour).Truncate(win)
	// 600 traces over 6s: roots every 10ms, lasting up to 22ms, so some
	// cross each window's end.
	set := assembletest.Generate(assembletest.Config{Traces: 600, Start: from, Spacing: 10 * time.Millisecond, Seed: 3})
	writeSpans(t, es, set.Spans)
	if n := runAll(t, w, from, 3, 0); n != len(set.Roots) {
		t.Errorf("tasks wrote %d traces, want %d", n, len(set.Roots))
	}
	checkAll(t, set, readTraces(t, es, from.Add(-time.Minute), from.Add(time.Minute)))
	// Rerun (a retry, or a re-assembly): same documents, no duplicate.
	runAll(t, w, from, 3, 1)
	checkAll(t, set, readTraces(t, es, from.Add(-time.Minute), from.Add(time.Minute)))
}

// Spans that arrive after their window was assembled: the first run
// writes fragments (the backend's subtree is missing, and its callees'
// server spans are roots without it); re-assembly after the spans land
// writes the whole traces and deletes the fragments.
func TestLateSpansCompleteTracesAndFragmentsGo(t *testing.T) {
	es := testenv.Store(t)
	w := newWorker(t, es)
	from := time.Now().UTC().Add(-time.Hour).Truncate(win)
	set := assembletest.Generate(assembletest.Config{Traces: 300, Start: from, Spacing: 10 * time.Millisecond, Seed: 5})
	var early, late []schemas.Span
	for _, s := range set.Spans {
		if s.Host == "host-svc2" {
			late = append(late, s)
		} else {
			early = append(early, s)
		}
	}
	writeSpans(t, es, early)
	runAll(t, w, from, 2, 0)
	before := readTraces(t, es, from.Add(-time.Minute), from.Add(time.Minute))
	if len(before) <= len(set.Roots) {
		t.Fatalf("without host-svc2 expected fragments: %d traces for %d roots", len(before), len(set.Roots))
	}
	writeSpans(t, es, late)
	runAll(t, w, from, 2, 1)
	checkAll(t, set, readTraces(t, es, from.Add(-time.Minute), from.Add(time.Minute)))
}

// Two runs of the same window and shard never overlap.
func TestRunsOfOneWindowExclude(t *testing.T) {
	es := testenv.Store(t)
	rdb := testenv.Redis(t)
	w, _ := worker.New(worker.Config{}, es, rdb)
	from := time.Now().UTC().Truncate(win)
	st := jobs.NewState(rdb)
	l, err := st.TryLock(context.Background(), from, 1, shards, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.Assemble(context.Background(), jobs.AssemblePayload{WindowStart: from, WindowEnd: from.Add(win), Shard: 1, Shards: shards})
	if !errors.Is(err, jobs.ErrLocked) {
		t.Fatalf("assemble under a held lock: %v, want ErrLocked", err)
	}
	l.Release(context.Background())
	if _, err := w.Assemble(context.Background(), jobs.AssemblePayload{WindowStart: from, WindowEnd: from.Add(win), Shard: 1, Shards: shards}); err != nil {
		t.Fatal(err)
	}
	done, _ := st.Assembled(context.Background(), from, shards)
	if _, ok := done[1]; !ok {
		t.Fatal("run not recorded as assembled")
	}
}
