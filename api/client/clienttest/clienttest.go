// Package clienttest starts DeepTrace's API in-process on the real engines
// (internal/testenv: OpenSearch with a fresh index prefix, Redis with a
// database of its own), seeded with synthetic traces, for the tests of the
// API's clients: the client package, the CLI and the dashboard's browser
// tests.
package clienttest

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/api"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
	"github.com/deeptrace/deeptrace/worker"
)

// The tokens the server accepts, one per role.
const (
	ViewerToken   = "dt_clienttest_viewer"
	OperatorToken = "dt_clienttest_operator"
	AdminToken    = "dt_clienttest_admin"
)

// Options shape the environment.
type Options struct {
	// Traces is how many synthetic traces to store (default 40), one every
	// Spacing (default 15 s) from Base.
	Traces  int
	Spacing time.Duration
	// Base is the first trace's start; default 30 minutes ago, so that the
	// API's default one-hour lookback finds every trace.
	Base time.Time
	// Worker runs a stand-in for the assembly worker on the reassembly
	// queue: each task waits TaskDelay (default 150 ms) and reports itself
	// done, so reassembly jobs make progress and finish. It assembles
	// nothing.
	Worker    bool
	TaskDelay time.Duration
	// RealWorker also stores every span of the traces in the span indices
	// and runs the real assembly worker (worker/) on both queues, so that a
	// reassembly re-reads the spans and rewrites the traces. Worker and
	// RealWorker exclude each other.
	RealWorker bool
	// Listen is the address the server listens on (default 127.0.0.1:0).
	Listen string
	// Redis is the API's Redis (default: a database of the shared test
	// server, testenv.Redis); a test that stops Redis brings its own.
	Redis *redis.Client
}

// Env is a running API server and what it was seeded with.
type Env struct {
	URL    string
	Store  *store.Store
	Redis  *redis.Client
	Base   time.Time
	Traces []schemas.Trace
}

// Start starts the server for the test; it stops when the test ends. It
// skips (or fails, with DEEPTRACE_REQUIRE_ENGINES=1) when the engines are
// not reachable.
func Start(t testing.TB, o Options) *Env {
	t.Helper()
	if o.Traces == 0 {
		o.Traces = 40
	}
	if o.Spacing == 0 {
		o.Spacing = 15 * time.Second
	}
	if o.Base.IsZero() {
		o.Base = time.Now().UTC().Add(-30 * time.Minute).Truncate(time.Second)
	}
	if o.TaskDelay == 0 {
		o.TaskDelay = 150 * time.Millisecond
	}
	st := testenv.Store(t)
	rdb := o.Redis
	if rdb == nil {
		rdb = testenv.Redis(t)
	}
	e := &Env{Store: st, Redis: rdb, Base: o.Base}
	for i := 0; i < o.Traces; i++ {
		e.Traces = append(e.Traces, Trace(i, o.Base.Add(time.Duration(i)*o.Spacing)))
	}
	if err := e.Write(e.Traces...); err != nil {
		t.Fatal(err)
	}
	cfg := api.Config{Tokens: []api.TokenSpec{
		spec(t, "viewer", "viewer", ViewerToken),
		spec(t, "operator", "operator", OperatorToken),
		spec(t, "admin", "admin", AdminToken),
	}}
	srv, err := api.New(cfg, api.Deps{Store: st, Redis: rdb, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(srv.Handler())
	if o.Listen != "" {
		hs.Listener.Close()
		ln, err := net.Listen("tcp", o.Listen)
		if err != nil {
			t.Fatal(err)
		}
		hs.Listener = ln
	}
	hs.Start()
	t.Cleanup(hs.Close)
	e.URL = hs.URL
	switch {
	case o.Worker && o.RealWorker:
		t.Fatal("clienttest: Worker and RealWorker exclude each other")
	case o.Worker:
		e.startWorker(t, o.TaskDelay)
	case o.RealWorker:
		if err := e.WriteSpans(e.Traces...); err != nil {
			t.Fatal(err)
		}
		e.StartWorker(t)
	}
	return e
}

// WriteSpans stores the spans of traces in the span indices, as agents
// would have, and makes them searchable.
func (e *Env) WriteSpans(traces ...schemas.Trace) error {
	var docs []store.Doc
	for i := range traces {
		for k := range traces[i].Spans {
			d, err := store.SpanDoc(e.Store.Indices(), &traces[i].Spans[k].Span)
			if err != nil {
				return err
			}
			docs = append(docs, d)
		}
	}
	return e.bulk(docs)
}

// StartWorker runs the real worker (worker/) on the test's engines until
// the test ends, serving queues (every queue when none are given), as
// deployed: without --webhook-allow-local.
func (e *Env) StartWorker(t testing.TB, queues ...string) {
	t.Helper()
	w, err := worker.New(worker.Config{Queues: queues, Concurrency: 2, ShutdownTimeout: time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, e.Store, e.Redis)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
}

func spec(t testing.TB, name, role, token string) api.TokenSpec {
	h := api.HashToken(token)
	s, err := api.ParseTokenSpec(name + ":" + role + ":" + hex.EncodeToString(h[:]))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Write stores traces and makes them searchable.
func (e *Env) Write(traces ...schemas.Trace) error {
	docs := make([]store.Doc, 0, len(traces))
	for i := range traces {
		d, err := store.TraceDoc(e.Store.Indices(), &traces[i])
		if err != nil {
			return err
		}
		docs = append(docs, d)
	}
	return e.bulk(docs)
}

func (e *Env) bulk(docs []store.Doc) error {
	res, err := e.Store.Bulk(context.Background(), docs, "true")
	if err != nil {
		return err
	}
	if len(res.Failed) > 0 {
		f := res.Failed[0]
		return fmt.Errorf("store refused %d traces, first: %d %s: %s %v", len(res.Failed), f.Status, f.Type, f.Reason, f.Err)
	}
	return nil
}

// startWorker serves the reassembly queue with a stand-in handler that
// only reports each task done, slowly enough to watch (RealWorker runs the
// real assembler).
func (e *Env) startWorker(t testing.TB, delay time.Duration) {
	srv := asynq.NewServerFromRedisClient(e.Redis, asynq.Config{
		Queues:      map[string]int{jobs.QueueReassembly: 1},
		Concurrency: 2,
		LogLevel:    asynq.ErrorLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc(jobs.TypeAssemble, func(ctx context.Context, task *asynq.Task) error {
		p, err := jobs.ParseAssemblePayload(task.Payload())
		if err != nil {
			return err
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
		if p.JobID == "" {
			return nil
		}
		return jobs.JobDone(ctx, e.Redis, p.JobID, true)
	})
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
}
