package client_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/api/client"
	"github.com/deeptrace/deeptrace/api/client/clienttest"
	"github.com/deeptrace/deeptrace/jobs"
)

func newClient(t *testing.T, e *clienttest.Env, token string) *client.Client {
	t.Helper()
	c, err := client.New(e.URL, token)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClient(t *testing.T) {
	e := clienttest.Start(t, clienttest.Options{Traces: 24, Worker: true, TaskDelay: 20 * time.Millisecond})
	c := newClient(t, e, clienttest.ViewerToken)
	ctx := context.Background()

	t.Run("search", func(t *testing.T) {
		res, err := c.SearchTraces(ctx, client.TraceQuery{Limit: 5})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Traces) != 5 || res.Traces[0].TraceID != e.Traces[len(e.Traces)-1].TraceID {
			t.Fatalf("got %d traces, first %+v; want the newest seeded trace %s first", len(res.Traces), res.Traces[0], e.Traces[len(e.Traces)-1].TraceID)
		}
		res, err = c.SearchTraces(ctx, client.TraceQuery{Service: "payments", ErrorOnly: true, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		want := 0
		for _, tr := range e.Traces {
			if tr.Error && slices.Contains(tr.Services, "payments") {
				want++
			}
		}
		if want == 0 || len(res.Traces) != want {
			t.Fatalf("failed payments traces: got %d, want %d", len(res.Traces), want)
		}
		res, err = c.SearchTraces(ctx, client.TraceQuery{Tags: []string{"db.system=postgresql"}, MinDuration: time.Millisecond, Limit: 100})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Traces) == 0 {
			t.Fatal("no trace with a postgresql call")
		}
	})
	t.Run("trace", func(t *testing.T) {
		want := e.Traces[3]
		got, err := c.Trace(ctx, want.TraceID)
		if err != nil {
			t.Fatal(err)
		}
		if got.TraceID != want.TraceID || len(got.Spans) != len(want.Spans) {
			t.Fatalf("got %s with %d spans, want %s with %d", got.TraceID, len(got.Spans), want.TraceID, len(want.Spans))
		}
		_, err = c.Trace(ctx, "00000000000000000000000000000001")
		if !client.IsNotFound(err) {
			t.Fatalf("missing trace: %v, want a 404", err)
		}
	})
	t.Run("services and operations", func(t *testing.T) {
		svcs, err := c.Services(ctx, client.Range{})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(svcs, []string{"gateway", "inventory", "orders", "payments", "users"}) {
			t.Fatalf("services %v", svcs)
		}
		ops, err := c.Operations(ctx, "gateway", client.Range{Lookback: 2 * time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(ops, "POST /api/orders") {
			t.Fatalf("gateway operations %v", ops)
		}
	})
	t.Run("dependencies", func(t *testing.T) {
		d, err := c.Dependencies(ctx, client.Range{Lookback: time.Hour}, "")
		if err != nil {
			t.Fatal(err)
		}
		if d.Traces != len(e.Traces) || len(d.Edges) < 5 {
			t.Fatalf("read %d traces (want %d), %d edges", d.Traces, len(e.Traces), len(d.Edges))
		}
	})
	t.Run("reassembly needs an operator", func(t *testing.T) {
		_, err := c.StartReassembly(ctx, client.ReassemblyRequest{From: e.Base, To: e.Base.Add(10 * time.Minute)})
		var ae *client.Error
		if !errorAs(err, &ae) || ae.Status != 403 {
			t.Fatalf("viewer started a reassembly: %v", err)
		}
	})
	t.Run("reassembly", func(t *testing.T) {
		op := newClient(t, e, clienttest.OperatorToken)
		job, err := op.StartReassembly(ctx, client.ReassemblyRequest{From: e.Base.Truncate(time.Minute), To: e.Base.Truncate(time.Minute).Add(10 * time.Minute), Window: "1m", Shards: 2})
		if err != nil {
			t.Fatal(err)
		}
		if job.Total != 20 || job.State != jobs.StateRunning {
			t.Fatalf("job %+v, want 20 tasks running", job)
		}
		var seen []int
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		final, err := c.WatchJob(wctx, job.ID, 50*time.Millisecond, func(s jobs.JobStatus) { seen = append(seen, s.Done) })
		if err != nil {
			t.Fatal(err)
		}
		if final.State != jobs.StateDone || final.Done != 20 || !slices.IsSorted(seen) {
			t.Fatalf("final %+v, progress %v", final, seen)
		}
		list, err := c.Jobs(ctx, 10)
		if err != nil || len(list) != 1 || list[0].ID != job.ID {
			t.Fatalf("jobs %v %v", list, err)
		}
	})
	t.Run("bad token", func(t *testing.T) {
		bad := newClient(t, e, "nope")
		_, err := bad.WhoAmI(ctx)
		var ae *client.Error
		if !errorAs(err, &ae) || ae.Status != 401 || ae.Message == "" {
			t.Fatalf("bad token: %v", err)
		}
	})
}

func TestNewRefusesBadURL(t *testing.T) {
	for _, u := range []string{"", "127.0.0.1:8080", "ftp://x", "http://"} {
		if _, err := client.New(u, ""); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
}

func TestSyntheticTracesNest(t *testing.T) {
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := 0; i < 20; i++ {
		tr := clienttest.Trace(i, base)
		byID := map[string]int{}
		for k, s := range tr.Spans {
			byID[s.SpanID] = k
		}
		if len(byID) != len(tr.Spans) {
			t.Fatalf("trace %d: duplicate span ids", i)
		}
		for _, s := range tr.Spans {
			if s.TraceParentID == "" {
				continue
			}
			p := tr.Spans[byID[s.TraceParentID]]
			if s.StartNs < p.StartNs || s.EndNs > p.EndNs || s.Depth <= p.Depth {
				t.Errorf("trace %d: span %s %s [%d,%d] d%d outside parent %s %s [%d,%d] d%d", i, s.Service, s.Operation,
					s.StartNs-tr.StartNs, s.EndNs-tr.StartNs, s.Depth, p.Service, p.Operation, p.StartNs-tr.StartNs, p.EndNs-tr.StartNs, p.Depth)
			}
		}
	}
}

func errorAs(err error, target **client.Error) bool { return errors.As(err, target) }
