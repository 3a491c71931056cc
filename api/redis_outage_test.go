package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/alerting"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
)

// envOn serves an API with cfg on rdb (a Redis the test may stop) and
// the shared engine.
func envOn(t *testing.T, rdb *redis.Client, cfg Config) *env {
	t.Helper()
	st := testenv.Store(t)
	srv, err := New(cfg, Deps{Store: st, Redis: rdb, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, st: st, rdb: rdb, srv: srv, http: httptest.NewServer(srv.Handler())}
	t.Cleanup(e.http.Close)
	return e
}

// outageCall is one request made while Redis is away, and what must come
// back.
type outageCall struct {
	method, path string
	token        string            // bearer token, or "" for the session's browser
	body         any               // JSON body
	status       int               // 503 unless a 4xx is due first
	what         string            // the name in "Redis (what) unreachable"
	hdr          map[string]string // extra headers
}

// TestRedisOutage stops a real Redis under a serving API: every route that
// needs Redis answers 503 with Retry-After and a message naming what is
// unavailable (never 500, and never a 401 that would log a dashboard
// user out); bad requests stay 4xx; configured bearer tokens and searches
// keep working. Redis started again, everything works again with the same
// session and tokens, without restarting the API.
func TestRedisOutage(t *testing.T) {
	rs := testenv.PrivateRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr})
	t.Cleanup(func() { rdb.Close() })
	e := envOn(t, rdb, Config{Tokens: []TokenSpec{
		spec(t, "viewer", "viewer", viewerToken),
		spec(t, "operator", "operator", operatorToken),
		spec(t, "admin", "admin", adminToken),
	}})
	past := time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Hour)
	job := map[string]any{"from": past.Format(time.RFC3339), "to": past.Add(5 * time.Minute).Format(time.RFC3339)}
	rule := map[string]any{"name": "checkout p99", "metric": "p99", "service": "checkout", "op": ">", "threshold": 300, "for": "5m"}

	// Before: a token created through the API, a dashboard session, a
	// job, configuration and an alert rule, all in Redis.
	var made struct {
		Token string `json:"token"`
	}
	mustStatus(t, e.req("POST", "/api/v1/tokens", adminToken, map[string]string{"name": "ci-bot", "role": "operator"}), 201).json(t, &made)
	b := e.browser()
	var sess sessionInfo
	mustStatus(t, e.reqWith(b, "POST", "/api/v1/auth/login", "", map[string]string{"token": operatorToken}, nil), 200).json(t, &sess)
	var started jobs.JobStatus
	mustStatus(t, e.req("POST", "/api/v1/reassembly", operatorToken, job), 202).json(t, &started)
	mustStatus(t, e.req("PUT", "/api/v1/config/alert-rules", adminToken, map[string]any{"webhook": "http://hooks.example/x"}), 200)
	mustStatus(t, e.req("PUT", "/api/v1/config/agent", adminToken, map[string]any{"sampling": map[string]any{"rate": 1}}), 200)
	var created alerting.Rule
	mustStatus(t, e.req("POST", "/api/v1/alerts/rules", adminToken, rule), 201).json(t, &created)

	rs.Stop()

	// What does not need Redis keeps working: configured bearer tokens,
	// searches (the cache is bypassed), probes.
	for _, path := range []string{"/api/v1/traces?lookback=1h", "/api/v1/services", "/api/services", "/healthz", "/monitor/"} {
		r := e.req("GET", path, viewerToken, nil)
		if r.status != 200 {
			t.Errorf("GET %s with a configured token, Redis down: %d %s, want 200", path, r.status, truncate(r.body))
		}
		if path == "/api/v1/traces?lookback=1h" && r.header.Get("X-Cache") != "error" {
			t.Errorf("search with Redis down: X-Cache %q, want error", r.header.Get("X-Cache"))
		}
	}
	var ready struct {
		Ready  bool              `json:"ready"`
		Checks map[string]string `json:"checks"`
	}
	r := e.req("GET", "/readyz", "", nil)
	r.json(t, &ready)
	if r.status != 503 || ready.Checks["redis"] == "ok" || ready.Checks["elasticsearch"] != "ok" {
		t.Errorf("readyz with Redis down: %d %+v, want 503 naming redis", r.status, ready)
	}

	csrf := map[string]string{csrfHeader: sess.CSRFToken}
	calls := []outageCall{
		// Authentication that needs Redis: sessions, tokens created
		// through the API (and any token not in the configuration,
		// since it cannot be told from one).
		{method: "GET", path: "/api/v1/services", what: redisSessions},
		{method: "GET", path: "/api/v1/auth/session", what: redisSessions},
		{method: "GET", path: "/api/services", what: redisSessions}, // Jaeger's shape
		{method: "POST", path: "/api/v1/auth/logout", hdr: csrf, what: redisSessions},
		{method: "GET", path: "/api/v1/services", token: made.Token, what: redisTokens},
		{method: "GET", path: "/api/v1/services", token: "dt_not_a_token", what: redisTokens},
		{method: "POST", path: "/api/v1/auth/login", token: "-", body: map[string]string{"token": viewerToken}, what: redisSessions},
		{method: "POST", path: "/api/v1/auth/login", token: "-", body: map[string]string{"token": "wrong"}, what: redisSessions},
		{method: "POST", path: "/api/v1/auth/login", token: "-", body: map[string]string{"tok": "x"}, status: 400},
		// Tokens.
		{method: "GET", path: "/api/v1/tokens", token: adminToken, what: redisTokens},
		{method: "POST", path: "/api/v1/tokens", token: adminToken, body: map[string]string{"name": "other", "role": "viewer"}, what: redisTokens},
		{method: "POST", path: "/api/v1/tokens", token: adminToken, body: map[string]string{"name": "other", "role": "root"}, status: 400},
		{method: "DELETE", path: "/api/v1/tokens/ci-bot", token: adminToken, what: redisTokens},
		{method: "DELETE", path: "/api/v1/tokens/admin", token: adminToken, status: 409},
		// Reassembly jobs.
		{method: "POST", path: "/api/v1/reassembly", token: operatorToken, body: job, what: redisJobs},
		{method: "POST", path: "/api/v1/reassembly", token: operatorToken, body: map[string]any{"from": job["to"], "to": job["from"]}, status: 400},
		{method: "GET", path: "/api/v1/reassembly", token: viewerToken, what: redisJobs},
		{method: "GET", path: "/api/v1/reassembly/" + started.ID, token: viewerToken, what: redisJobs},
		{method: "GET", path: "/api/v1/reassembly/nope", token: viewerToken, status: 400},
		// Configuration, the agents' included.
		{method: "GET", path: "/api/v1/config/alert-rules", token: viewerToken, what: redisConfig},
		{method: "PUT", path: "/api/v1/config/alert-rules", token: adminToken, body: map[string]any{"a": 1}, what: redisConfig},
		{method: "PUT", path: "/api/v1/config/alert-rules", token: adminToken, body: "[1]", status: 400},
		{method: "GET", path: "/api/v1/config/nope", token: viewerToken, status: 404},
		{method: "GET", path: "/api/v1/config/agent", token: viewerToken, what: redisConfig},
		{method: "GET", path: "/api/v1/config/agent?wait=5s", token: viewerToken, hdr: map[string]string{"If-None-Match": `"x"`}, what: redisConfig},
		{method: "PUT", path: "/api/v1/config/agent", token: adminToken, body: map[string]any{"sampling": map[string]any{"rate": 0.5}}, what: redisConfig},
		{method: "PUT", path: "/api/v1/config/agent", token: adminToken, body: map[string]any{"no_such_field": 1}, status: 400},
		// Alert rules, states and history.
		{method: "GET", path: "/api/v1/alerts", token: viewerToken, what: redisAlerts},
		{method: "GET", path: "/api/v1/alerts/rules", token: viewerToken, what: redisAlerts},
		{method: "GET", path: "/api/v1/alerts/rules/" + created.ID, token: viewerToken, what: redisAlerts},
		{method: "GET", path: "/api/v1/alerts/history", token: viewerToken, what: redisAlerts},
		{method: "POST", path: "/api/v1/alerts/rules", token: adminToken, body: rule, what: redisAlerts},
		{method: "POST", path: "/api/v1/alerts/rules", token: adminToken, body: map[string]any{"name": "x"}, status: 400},
		{method: "PUT", path: "/api/v1/alerts/rules/" + created.ID, token: adminToken, body: rule, what: redisAlerts},
		{method: "DELETE", path: "/api/v1/alerts/rules/" + created.ID, token: adminToken, what: redisAlerts},
		// The asynq monitor's API.
		{method: "GET", path: "/monitor/api/queues", token: viewerToken, what: redisQueues},
	}
	for _, c := range calls {
		client, token := http.DefaultClient, c.token
		switch token {
		case "":
			client = b
		case "-":
			token = ""
		}
		r := e.reqWith(client, c.method, c.path, token, c.body, c.hdr)
		checkOutageAnswer(t, c, r)
	}
	// The session was not ended by any of that.
	if r := e.reqWith(b, "GET", "/api/v1/auth/session", "", nil, nil); r.header.Get("Set-Cookie") != "" {
		t.Errorf("a session check with Redis down set a cookie: %s", r.header.Get("Set-Cookie"))
	}

	rs.Start()

	// Back, with no restart of the API. After a run of failed dials
	// go-redis stops dialing on demand and probes once a second, so
	// readiness comes back within about a second.
	back := time.Now()
	for e.req("GET", "/readyz", "", nil).status != 200 {
		if time.Since(back) > 10*time.Second {
			t.Fatal("/readyz not 200 within 10s of Redis being back")
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("ready again %s after Redis was back", time.Since(back).Round(time.Millisecond))
	// The same session, the created token, the job, the configuration
	// and the rule are all there.
	var who sessionInfo
	mustStatus(t, e.reqWith(b, "GET", "/api/v1/auth/session", "", nil, nil), 200).json(t, &who)
	if who.Name != "operator" || who.CSRFToken != sess.CSRFToken {
		t.Errorf("session after the restart: %+v", who)
	}
	mustStatus(t, e.reqWith(b, "GET", "/api/services", "", nil, nil), 200)
	mustStatus(t, e.req("GET", "/api/v1/services", made.Token, nil), 200)
	mustStatus(t, e.req("GET", "/api/v1/services", "dt_not_a_token", nil), 401)
	var got jobs.JobStatus
	mustStatus(t, e.req("GET", "/api/v1/reassembly/"+started.ID, viewerToken, nil), 200).json(t, &got)
	if got.ID != started.ID || got.Total != started.Total {
		t.Errorf("job after the restart: %+v, want %+v", got, started)
	}
	mustStatus(t, e.req("GET", "/api/v1/reassembly", viewerToken, nil), 200)
	mustStatus(t, e.req("POST", "/api/v1/reassembly", operatorToken, job), 202)
	if r := mustStatus(t, e.req("GET", "/api/v1/tokens", adminToken, nil), 200); !strings.Contains(string(r.body), `"ci-bot"`) {
		t.Errorf("token list after the restart lacks ci-bot: %s", r.body)
	}
	if r := mustStatus(t, e.req("GET", "/api/v1/config/alert-rules", viewerToken, nil), 200); !strings.Contains(string(r.body), "hooks.example") {
		t.Errorf("configuration after the restart: %s", r.body)
	}
	mustStatus(t, e.req("GET", "/api/v1/config/agent", viewerToken, nil), 200)
	mustStatus(t, e.req("GET", "/api/v1/alerts/rules/"+created.ID, viewerToken, nil), 200)
	mustStatus(t, e.req("GET", "/api/v1/alerts", viewerToken, nil), 200)
	mustStatus(t, e.req("GET", "/api/v1/alerts/history", viewerToken, nil), 200)
	mustStatus(t, e.req("GET", "/monitor/api/queues", viewerToken, nil), 200)
	if r := mustStatus(t, e.req("GET", "/api/v1/traces?lookback=1h", viewerToken, nil), 200); r.header.Get("X-Cache") == "error" {
		t.Errorf("search after the restart: X-Cache error")
	}
	mustStatus(t, e.reqWith(e.browser(), "POST", "/api/v1/auth/login", "", map[string]string{"token": viewerToken}, nil), 200)
	mustStatus(t, e.reqWith(b, "POST", "/api/v1/auth/logout", "", nil, csrf), 204)
}

func checkOutageAnswer(t *testing.T, c outageCall, r response) {
	t.Helper()
	want := c.status
	if want == 0 {
		want = http.StatusServiceUnavailable
	}
	name := c.method + " " + c.path
	if r.status != want {
		t.Errorf("%s with Redis down: %d %s, want %d", name, r.status, truncate(r.body), want)
		return
	}
	if want != http.StatusServiceUnavailable {
		return
	}
	if ra := r.header.Get("Retry-After"); ra != strconv.Itoa(retryAfterSeconds) {
		t.Errorf("%s: Retry-After %q, want %d", name, ra, retryAfterSeconds)
	}
	if msg, prefix := r.errMsg(), "Redis ("+c.what+") unreachable, retry"; !strings.HasPrefix(msg, prefix) {
		t.Errorf("%s: message %q, want it to start %q", name, msg, prefix)
	}
	if h := r.header.Get(echo.HeaderWWWAuthenticate); h != "" {
		t.Errorf("%s: a 503 asking for credentials (WWW-Authenticate %q)", name, h)
	}
	if sc := r.header.Get("Set-Cookie"); sc != "" {
		t.Errorf("%s: a 503 setting a cookie: %s", name, sc)
	}
}

func mustStatus(t *testing.T, r response, want int) response {
	t.Helper()
	if r.status != want {
		t.Fatalf("%d %s, want %d", r.status, truncate(r.body), want)
	}
	return r
}

// TestRedisHangs points the API at a Redis that accepts connections and
// never answers: a request that runs out of time waiting for it is Redis
// being unavailable (503, Retry-After), not a slow request (504).
func TestRedisHangs(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, c) // read, never answer
		}
	}()
	rdb := redis.NewClient(&redis.Options{Addr: ln.Addr().String(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { rdb.Close() })
	e := envOn(t, rdb, Config{RequestTimeout: 500 * time.Millisecond, Tokens: []TokenSpec{spec(t, "admin", "admin", adminToken)}})
	for _, c := range []outageCall{
		{method: "GET", path: "/api/v1/tokens", token: adminToken, what: redisTokens},
		{method: "GET", path: "/api/v1/config/agent", token: adminToken, what: redisConfig},
	} {
		checkOutageAnswer(t, c, e.req(c.method, c.path, c.token, nil))
	}
}

// TestRedisUnreachable pins which Redis errors are Redis being away (503)
// and which are bugs or misconfiguration (500).
func TestRedisUnreachable(t *testing.T) {
	dial := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	for _, c := range []struct {
		err  error
		want bool
	}{
		{dial, true},
		{fmt.Errorf("look up token: %w", dial), true},
		{&net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}, true},
		{io.EOF, true},
		{redis.ErrClosed, true},
		{redis.ErrPoolTimeout, true},
		{context.DeadlineExceeded, true},
		{fmt.Errorf("read session: %w", context.DeadlineExceeded), true},
		{errors.New("LOADING Redis is loading the dataset in memory"), true},
		{errors.New("MASTERDOWN Link with MASTER is down"), true},
		{context.Canceled, false},
		{redis.Nil, false},
		{nil, false},
		{errors.New("WRONGTYPE Operation against a key holding the wrong kind of value"), false},
		{errors.New("NOAUTH Authentication required."), false},
		{errors.New("WRONGPASS invalid username-password pair"), false},
		{fmt.Errorf("stored token: %w", errors.New("invalid character 'x' looking for beginning of value")), false},
	} {
		if got := redisUnreachable(c.err); got != c.want {
			t.Errorf("redisUnreachable(%v) = %v, want %v", c.err, got, c.want)
		}
		if c.err == nil {
			continue
		}
		var ru *redisUnavailableError
		if got := errors.As(redisErr(redisTokens, "", c.err), &ru); got != c.want {
			t.Errorf("redisErr(%v) marked %v, want %v", c.err, got, c.want)
		}
	}
	// An error marked deep down is renamed by the caller that knows what
	// the request was doing.
	inner := redisErr(redisTokens, hintCreatedTokens, dial)
	var ru *redisUnavailableError
	if !errors.As(redisErr(redisSessions, hintSession, fmt.Errorf("x: %w", inner)), &ru) || ru.What != redisSessions || ru.Hint != hintSession {
		t.Errorf("re-marked error: %+v", ru)
	}
}

// TestRedisFrozen freezes a real redis-server (SIGSTOP) under an API whose
// client is built as `deeptrace api` builds it (RedisOptions), with the
// default 30s request timeout. Searches still come back from the engine:
// the first after at most the cache's timeout (X-Cache: error), the next
// without asking Redis (bypass). What needs Redis is a 503 once the Redis
// client's timeouts run out, not a 504 after the request's 30s. Thawed, the
// cache is used again once its backoff has passed.
func TestRedisFrozen(t *testing.T) {
	rs := testenv.PrivateRedis(t)
	o := &redis.Options{Addr: rs.Addr}
	RedisOptions(o)
	rdb := redis.NewClient(o)
	t.Cleanup(func() { rdb.Close() })
	const backoff = time.Second
	e := envOn(t, rdb, Config{CacheBackoff: backoff, Tokens: []TokenSpec{
		spec(t, "viewer", "viewer", viewerToken),
		spec(t, "admin", "admin", adminToken),
	}})
	const search = "/api/v1/traces?lookback=1h"
	cacheSays := func(want ...string) time.Duration {
		t.Helper()
		start := time.Now()
		r := mustStatus(t, e.req("GET", search, viewerToken, nil), 200)
		took := time.Since(start)
		got := r.header.Get("X-Cache")
		for _, w := range want {
			if got == w {
				return took
			}
		}
		t.Fatalf("search: X-Cache %q, want one of %q", got, want)
		return took
	}
	cacheSays("miss")
	warm := cacheSays("hit")

	rs.Freeze()
	t.Cleanup(rs.Thaw) // before the server is killed
	first := cacheSays("error")
	next := cacheSays("bypass")
	start := time.Now()
	checkOutageAnswer(t, outageCall{method: "GET", path: "/api/v1/tokens", token: adminToken, what: redisTokens},
		e.req("GET", "/api/v1/tokens", adminToken, nil))
	refused := time.Since(start)
	rs.Thaw()

	time.Sleep(backoff + 100*time.Millisecond)
	back := cacheSays("hit", "miss") // a new minute makes a new key
	t.Logf("search: %s cached; Redis frozen: %s (cache given up), %s (bypassed); tokens 503 after %s; thawed: %s",
		warm.Round(time.Millisecond), first.Round(time.Millisecond), next.Round(time.Millisecond),
		refused.Round(time.Millisecond), back.Round(time.Millisecond))
}
