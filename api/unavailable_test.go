package api

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/store"
)

// TestSearchWhileEngineDown points the API at an engine address where
// nothing listens any more (the listener was closed, as a stopped node's
// is): every read answers 503 with Retry-After and a message that says to
// retry, never 500. faults/ TestOpenSearchRestartUnderAPI does the same
// with a real node stopped and started again.
func TestSearchWhileEngineDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	st, err := store.Open(store.Config{URLs: []string{"http://" + addr}, Engine: testenv.ESEngine(), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Tokens: []TokenSpec{spec(t, "viewer", "viewer", viewerToken)}},
		Deps{Store: st, Redis: testenv.Redis(t), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, st: st, srv: srv, http: httptest.NewServer(srv.Handler())}
	t.Cleanup(e.http.Close)

	for _, path := range []string{
		"/api/v1/traces?lookback=1h",
		"/api/v1/traces?service=cart&lookback=2h&limit=5",
		"/api/v1/traces/0123456789abcdef0123456789abcdef",
		"/api/v1/services",
		"/api/v1/services/cart/operations",
		"/api/v1/metrics/series?service=cart&lookback=1h",
		"/api/traces/0123456789abcdef0123456789abcdef",
		"/api/v1/dependencies?lookback=1h",
		"/api/services",
		"/api/traces?service=cart&lookback=1h",
	} {
		r := e.req("GET", path, viewerToken, nil)
		if r.status != http.StatusServiceUnavailable {
			t.Errorf("GET %s with the engine down: %d %s, want 503", path, r.status, truncate(r.body))
			continue
		}
		if ra := r.header.Get("Retry-After"); ra != "5" {
			t.Errorf("GET %s: Retry-After %q, want 5", path, ra)
		}
		if msg := string(r.body); !strings.Contains(msg, "search engine is unavailable") || !strings.Contains(msg, "retry") {
			t.Errorf("GET %s: body %s does not say the engine is away and to retry", path, truncate(r.body))
		}
	}
	if r := e.req("GET", "/readyz", "", nil); r.status != http.StatusServiceUnavailable {
		t.Errorf("readyz with the engine down: %d", r.status)
	}
	// A request the engine never saw is still the client's fault.
	if r := e.req("GET", "/api/v1/traces?lookback=banana", viewerToken, nil); r.status != http.StatusBadRequest {
		t.Errorf("bad parameter with the engine down: %d, want 400", r.status)
	}
}
