package api

import (
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/deeptrace/deeptrace/api/internal/synth"
	"github.com/deeptrace/deeptrace/api/web"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// expect lists the ids of the seeded traces keep selects, newest first,
// at most limit: what a search must answer.
func (e *env) expect(limit int, keep func(i int, t *schemas.Trace) bool) []string {
	var sel []*schemas.Trace
	for i := range e.traces {
		if keep(i, &e.traces[i]) {
			sel = append(sel, &e.traces[i])
		}
	}
	sort.Slice(sel, func(a, b int) bool {
		if sel[a].StartNs != sel[b].StartNs {
			return sel[a].StartNs > sel[b].StartNs
		}
		return sel[a].TraceID < sel[b].TraceID
	})
	out := []string{}
	for _, t := range sel[:min(limit, len(sel))] {
		out = append(out, t.TraceID)
	}
	return out
}

func (e *env) rangeQuery() string {
	return "from=" + url.QueryEscape(e.base.Format(time.RFC3339)) + "&to=" + url.QueryEscape(e.base.Add(time.Hour).Format(time.RFC3339))
}

func hasKV(t *schemas.Trace, kv string) bool { return slices.Contains(t.TagKV, kv) }

func TestSearchTraces(t *testing.T) {
	e := newEnv(t, 200, nil)
	rq := e.rangeQuery()
	all := func(int, *schemas.Trace) bool { return true }
	cases := []struct {
		name  string
		query string
		limit int
		keep  func(int, *schemas.Trace) bool
	}{
		{"range only", rq + "&limit=1000", 1000, all},
		{"default limit", rq, 20, all},
		{"service", rq + "&service=payments&limit=500", 500, func(_ int, t *schemas.Trace) bool { return slices.Contains(t.Services, "payments") }},
		{"operation", rq + "&service=gateway&operation=" + url.QueryEscape("POST /api/orders") + "&limit=500", 500,
			func(i int, _ *schemas.Trace) bool { return synth.RootOperation(i) == "POST /api/orders" }},
		{"callee operation", rq + "&service=payments&operation=" + url.QueryEscape("POST /charge") + "&limit=500", 500,
			func(_ int, t *schemas.Trace) bool { return slices.Contains(t.Operations, "payments POST /charge") }},
		{"tag status", rq + "&tag=http.status_code=500&limit=500", 500, func(_ int, t *schemas.Trace) bool { return hasKV(t, "http.status_code=500") }},
		{"two tags", rq + "&tag=db.system=redis&tag=http.method=POST&limit=500", 500,
			func(_ int, t *schemas.Trace) bool { return hasKV(t, "db.system=redis") && hasKV(t, "http.method=POST") }},
		{"error tag", rq + "&tag=error=true&limit=500", 500, func(_ int, t *schemas.Trace) bool { return t.Error }},
		{"error only", rq + "&error=true&limit=500", 500, func(_ int, t *schemas.Trace) bool { return t.Error }},
		{"min duration", rq + "&min_duration=500ms&limit=500", 500, func(_ int, t *schemas.Trace) bool { return t.DurationNs >= int64(500*time.Millisecond) }},
		{"duration window", rq + "&min_duration=100ms&max_duration=200ms&limit=500", 500, func(_ int, t *schemas.Trace) bool {
			return t.DurationNs >= int64(100*time.Millisecond) && t.DurationNs <= int64(200*time.Millisecond)
		}},
		{"host", rq + "&host=host-inventory&limit=500", 500, func(_ int, t *schemas.Trace) bool { return slices.Contains(t.Hosts, "host-inventory") }},
		{"narrow range", "from=" + url.QueryEscape(e.at(10).Format(time.RFC3339)) + "&to=" + url.QueryEscape(e.at(19).Format(time.RFC3339)), 20,
			func(i int, _ *schemas.Trace) bool { return i >= 10 && i <= 19 }},
		{"unix ms range", fmt.Sprintf("from=%d&to=%d", e.at(50).UnixMilli(), e.at(59).UnixMilli()), 20,
			func(i int, _ *schemas.Trace) bool { return i >= 50 && i <= 59 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got traceSearchResult
			e.get("/api/v1/traces?"+c.query, &got)
			ids := []string{}
			for _, s := range got.Traces {
				ids = append(ids, s.TraceID)
			}
			want := e.expect(c.limit, c.keep)
			if len(want) == 0 {
				t.Fatalf("test data selects nothing for %s", c.query)
			}
			if !slices.Equal(ids, want) {
				t.Fatalf("%s: got %d traces, want %d\n got %v\nwant %v", c.query, len(ids), len(want), ids, want)
			}
		})
	}
	t.Run("summary fields", func(t *testing.T) {
		var got traceSearchResult
		e.get("/api/v1/traces?"+rq+"&limit=1", &got)
		want := e.traces[len(e.traces)-1]
		s := got.Traces[0]
		if s.TraceID != want.TraceID || s.RootOperation != want.RootOperation || s.SpanCount != want.SpanCount ||
			s.DurationNs != want.DurationNs || !s.Start.Equal(want.Timestamp) || !slices.Equal(s.Services, want.Services) {
			t.Fatalf("summary %+v\nwant trace %s %s %d spans %d ns", s, want.TraceID, want.RootOperation, want.SpanCount, want.DurationNs)
		}
	})
}

func TestGetTrace(t *testing.T) {
	e := newEnv(t, 20, nil)
	want := e.traces[7]
	var got schemas.Trace
	e.get("/api/v1/traces/"+want.TraceID, &got)
	if got.TraceID != want.TraceID || len(got.Spans) != want.SpanCount || got.Spans[3].SpanID != want.Spans[3].SpanID {
		t.Fatalf("got trace %s with %d spans, want %s with %d", got.TraceID, len(got.Spans), want.TraceID, want.SpanCount)
	}
	upper := e.get("/api/v1/traces/"+strings.ToUpper(want.TraceID), &got)
	if upper.status != 200 {
		t.Fatal("upper-case id refused")
	}
	r := e.req("GET", "/api/v1/traces/"+strings.Repeat("ab", 16), viewerToken, nil)
	if r.status != 404 || !strings.Contains(r.errMsg(), "not found") {
		t.Fatalf("missing trace: %d %s", r.status, r.body)
	}
}

// TestOldTraceFetchable: a trace stays fetchable by id, without a time
// range, for as long as its daily index is retained, however old.
func TestOldTraceFetchable(t *testing.T) {
	e := newEnv(t, 0, nil)
	old := synth.Trace(4242, time.Now().UTC().Add(-45*24*time.Hour), 12)
	late := synth.Trace(4243, time.Now().UTC().Add(-3*24*time.Hour), 5)
	e.write(old, late)
	for _, tr := range []schemas.Trace{old, late} {
		var got schemas.Trace
		e.get("/api/v1/traces/"+tr.TraceID, &got)
		if got.TraceID != tr.TraceID || len(got.Spans) != tr.SpanCount {
			t.Fatalf("trace of %s: got %s with %d spans", tr.Timestamp, got.TraceID, len(got.Spans))
		}
		var j jaegerResponse
		e.get("/api/traces/"+tr.TraceID, &j)
	}
}

func TestServicesAndOperations(t *testing.T) {
	e := newEnv(t, 60, nil)
	var svcs struct {
		Services []string `json:"services"`
	}
	e.get("/api/v1/services", &svcs)
	want := []string{"gateway", "inventory", "orders", "payments", "users"}
	if !slices.Equal(svcs.Services, want) {
		t.Fatalf("services %v, want %v", svcs.Services, want)
	}
	e.get("/api/v1/services?lookback=10m", &svcs)
	if len(svcs.Services) != 0 {
		t.Fatalf("services of the last 10 minutes %v, want none", svcs.Services)
	}
	var ops struct {
		Operations []string `json:"operations"`
	}
	// The gateway's operations: the ones it answers and the ones it calls.
	e.get("/api/v1/services/gateway/operations?"+e.rangeQuery(), &ops)
	if got := opsOf(e.traces, "gateway"); !slices.Equal(ops.Operations, got) || !slices.Contains(got, synth.RootOperations[1]) {
		t.Fatalf("gateway operations %v, want %v", ops.Operations, got)
	}
	// orders answers one operation and calls three (its client spans);
	// the callers' and callees' operations are not its own.
	e.get("/api/v1/services/orders/operations", &ops)
	wantOrders := opsOf(e.traces, "orders")
	if !slices.Equal(ops.Operations, wantOrders) || !slices.Contains(ops.Operations, "GET /orders/{id}") {
		t.Fatalf("orders operations %v, want %v", ops.Operations, wantOrders)
	}
	e.get("/api/v1/services/no-such-service/operations", &ops)
	if len(ops.Operations) != 0 {
		t.Fatalf("unknown service has operations %v", ops.Operations)
	}
}

// opsOf lists the operations of svc in traces, sorted.
func opsOf(traces []schemas.Trace, svc string) []string {
	seen := map[string]bool{}
	for _, tr := range traces {
		for _, o := range tr.Operations {
			if rest, ok := strings.CutPrefix(o, svc+" "); ok {
				seen[rest] = true
			}
		}
	}
	out := []string{}
	for o := range seen {
		out = append(out, o)
	}
	slices.Sort(out)
	return out
}

func TestDependencies(t *testing.T) {
	e := newEnv(t, 120, nil)
	var got struct {
		Edges   []store.DependencyEdge `json:"edges"`
		Traces  int                    `json:"traces"`
		Sampled bool                   `json:"sampled"`
	}
	e.get("/api/v1/dependencies?"+e.rangeQuery(), &got)
	var spans [][]schemas.TraceSpan
	for _, t := range e.traces {
		spans = append(spans, t.Spans)
	}
	want := store.DependencyEdges(spans)
	if got.Traces != 120 || got.Sampled || len(got.Edges) != len(want) {
		t.Fatalf("%d edges from %d traces (sampled %v), want %d from 120", len(got.Edges), got.Traces, got.Sampled, len(want))
	}
	byKey := map[string]store.DependencyEdge{}
	for _, e := range got.Edges {
		byKey[e.Parent+">"+e.Child] = e
	}
	for _, w := range want {
		g := byKey[w.Parent+">"+w.Child]
		if g != w {
			t.Errorf("edge %s>%s: got %+v want %+v", w.Parent, w.Child, g, w)
		}
	}
	gw := byKey["gateway>orders"]
	if gw.Calls == 0 || gw.P50Ns <= 0 || gw.P50Ns > gw.P90Ns || gw.P90Ns > gw.P99Ns || gw.P99Ns > gw.MaxNs {
		t.Fatalf("gateway>orders %+v", gw)
	}
	if _, ok := byKey["users>redis://10.0.0.6:6379"]; !ok {
		t.Fatalf("no edge to the untraced redis: %v", got.Edges)
	}
	// Filtered by service, and capped.
	e.get("/api/v1/dependencies?service=payments&"+e.rangeQuery(), &got)
	for _, ed := range got.Edges {
		if ed.Parent != "payments" && ed.Child != "payments" {
			t.Fatalf("edge %s>%s does not touch payments", ed.Parent, ed.Child)
		}
	}
	capped := newEnv(t, 30, func(c *Config) { c.DependencyMaxTraces = 10 })
	capped.get("/api/v1/dependencies?"+capped.rangeQuery(), &got)
	if got.Traces != 10 || !got.Sampled {
		t.Fatalf("capped map read %d traces, sampled %v", got.Traces, got.Sampled)
	}
}

// TestBadInput: every malformed request gets a 4xx whose message names the
// problem.
func TestBadInput(t *testing.T) {
	e := newEnv(t, 1, func(c *Config) { c.MaxBodyBytes = 4096 })
	cases := []struct {
		method, path string
		body         any
		token        string
		status       int
		msg          string
	}{
		{"GET", "/api/v1/traces?from=yesterday", nil, "", 400, `from "yesterday"`},
		{"GET", "/api/v1/traces?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", nil, "", 400, "is not after from"},
		{"GET", "/api/v1/traces?lookback=400d", nil, "", 400, "longer than the maximum"},
		{"GET", "/api/v1/traces?lookback=1h&from=2026-01-01T00:00:00Z", nil, "", 400, "either from or lookback"},
		{"GET", "/api/v1/traces?lookback=soon", nil, "", 400, `lookback "soon"`},
		{"GET", "/api/v1/traces?limit=5000", nil, "", 400, "limit 5000: want 1..1500"},
		{"GET", "/api/v1/traces?limit=-1", nil, "", 400, "limit -1"},
		{"GET", "/api/v1/traces?limit=ten", nil, "", 400, `limit "ten"`},
		{"GET", "/api/v1/traces?limit=1&limit=2", nil, "", 400, `"limit" given 2 times`},
		{"GET", "/api/v1/traces?servce=gateway", nil, "", 400, `unknown parameter "servce"`},
		{"GET", "/api/v1/traces?operation=GET", nil, "", 400, "needs a service"},
		{"GET", "/api/v1/traces?min_duration=fast", nil, "", 400, `min duration "fast"`},
		{"GET", "/api/v1/traces?min_duration=2s&max_duration=1s", nil, "", 400, "below min duration"},
		{"GET", "/api/v1/traces?tag=http.status_code", nil, "", 400, "want key=value"},
		{"GET", "/api/v1/traces?error=maybe", nil, "", 400, `error "maybe"`},
		{"GET", "/api/v1/traces/not-hex", nil, "", 400, "hex"},
		{"GET", "/api/v1/traces/" + strings.Repeat("a", 33), nil, "", 400, "up to 32 hex"},
		{"GET", "/api/v1/dependencies?to=2026-13-01T00:00:00Z", nil, "", 400, `to "2026-13-01T00:00:00Z"`},
		{"GET", "/api/v1/reassembly/nope", nil, "", 400, "not a reassembly job id"},
		{"GET", "/api/v1/reassembly/20260101t000000-0000000000000000", nil, "", 404, "not found"},
		{"GET", "/api/v1/audit?outcome=maybe", nil, adminToken, 400, `outcome "maybe"`},
		{"GET", "/api/v1/config/nonsense", nil, "", 404, `section "nonsense"`},
		{"POST", "/api/v1/reassembly", `{"from":"2026-01-01T00:00:00Z"}`, operatorToken, 400, "from and to are required"},
		{"POST", "/api/v1/reassembly", `{"from":"2026-01-01T01:00:00Z","to":"2026-01-01T00:00:00Z"}`, operatorToken, 400, "is not after from"},
		{"POST", "/api/v1/reassembly", `{"from":"2026-01-01T00:00:00Z","to":"2099-01-01T00:00:00Z"}`, operatorToken, 400, "in the future"},
		{"POST", "/api/v1/reassembly", `{"from":"2026-01-01T00:00:00Z","to":"2026-01-02T00:00:00Z","window":"1s"}`, operatorToken, 400, "tasks, more than"},
		{"POST", "/api/v1/reassembly", `{"from":"2026-01-01T00:00:00Z","to":"2026-01-01T01:00:00Z","window":"forever"}`, operatorToken, 400, `window "forever"`},
		{"POST", "/api/v1/reassembly", `{"from":"2026-01-01T00:00:00Z","to":"2026-01-01T01:00:00Z","color":"red"}`, operatorToken, 400, `unknown field "color"`},
		{"POST", "/api/v1/reassembly", `{"from":`, operatorToken, 400, "request body"},
		{"POST", "/api/v1/reassembly", `{"from":"2026-01-01T00:00:00Z","to":"2026-01-01T01:00:00Z","services":[""]}`, operatorToken, 400, "services"},
		{"POST", "/api/v1/reassembly", strings.Repeat("x", 10000), operatorToken, 413, "larger than 4096 bytes"},
		{"POST", "/api/v1/tokens", `{"name":"Bad Name","role":"viewer"}`, adminToken, 400, `name "Bad Name"`},
		{"POST", "/api/v1/tokens", `{"name":"x","role":"king"}`, adminToken, 400, `role "king"`},
		{"PUT", "/api/v1/config/agent", `[1,2]`, adminToken, 400, "one JSON object"},
		{"POST", "/api/v1/auth/login", `{}`, "", 400, "token: required"},
		{"GET", "/api/traces", nil, "", 400, "parameter 'service' is required"},
		{"GET", "/api/traces?service=gateway&start=abc", nil, "", 400, "unable to parse param 'start'"},
		{"GET", "/api/traces?service=gateway&minDuration=1parsec", nil, "", 400, "min duration"},
		{"GET", "/api/traces?service=gateway&minDuration=2s&maxDuration=1s", nil, "", 400, "below min duration"},
		{"GET", "/api/traces?service=gateway&tag=oops", nil, "", 400, "malformed 'tag' parameter"},
		{"GET", "/api/traces?service=gateway&tags=notjson", nil, "", 400, "malformed 'tags' parameter"},
		{"GET", "/api/traces?service=gateway&limit=99999", nil, "", 400, "limit 99999 is above the maximum"},
		{"GET", "/api/traces?service=gateway&start=2000000000000000&end=1000000000000000", nil, "", 400, "must be after 'start'"},
		{"GET", "/api/traces?traceID=xyz", nil, "", 400, "cannot parse traceID"},
		{"GET", "/api/traces/zzzz", nil, "", 400, "hex"},
		{"GET", "/api/operations", nil, "", 400, "parameter 'service' is required"},
		{"GET", "/api/operations?service=a&spanKind=sideways", nil, "", 400, "unsupported span kind"},
		{"GET", "/api/dependencies?endTs=now", nil, "", 400, "unable to parse param 'endTs'"},
		{"GET", "/api/dependencies?lookback=-5", nil, "", 400, "unable to parse param 'lookback'"},
		{"GET", "/api/v1/nothing-here", nil, "", 404, "Not Found"},
		{"DELETE", "/api/v1/traces", nil, "", 405, "Method Not Allowed"},
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			tok := c.token
			if tok == "" {
				tok = viewerToken
			}
			r := e.req(c.method, c.path, tok, c.body)
			if r.status != c.status || !strings.Contains(r.errMsg(), c.msg) {
				t.Fatalf("got %d %q, want %d with %q", r.status, r.errMsg(), c.status, c.msg)
			}
		})
	}
}

func TestAuthorization(t *testing.T) {
	e := newEnv(t, 1, nil)
	jobBody := map[string]any{"from": e.base.Format(time.RFC3339), "to": e.base.Add(10 * time.Minute).Format(time.RFC3339)}
	cases := []struct {
		name         string
		method, path string
		token        string
		body         any
		status       int
		action       string // audited action; "" when not audited
	}{
		{"no credentials", "GET", "/api/v1/services", "", nil, 401, "access"},
		{"wrong token", "GET", "/api/v1/services", "dt_guess", nil, 401, "access"},
		{"viewer reads", "GET", "/api/v1/services", viewerToken, nil, 200, ""},
		{"viewer reads jaeger", "GET", "/api/services", viewerToken, nil, 200, ""},
		{"viewer reads metrics", "GET", "/metrics", viewerToken, nil, 200, ""},
		{"anonymous metrics", "GET", "/metrics", "", nil, 401, "access"},
		{"viewer cannot reassemble", "POST", "/api/v1/reassembly", viewerToken, jobBody, 403, "reassembly.start"},
		{"operator reassembles", "POST", "/api/v1/reassembly", operatorToken, jobBody, 202, "reassembly.start"},
		{"operator cannot change configuration", "PUT", "/api/v1/config/alert-rules", operatorToken, `{"rules":[]}`, 403, "config.put"},
		{"operator cannot make tokens", "POST", "/api/v1/tokens", operatorToken, `{"name":"x","role":"admin"}`, 403, "token.create"},
		{"operator cannot read the audit log", "GET", "/api/v1/audit", operatorToken, nil, 403, "access"},
		{"admin changes configuration", "PUT", "/api/v1/config/alert-rules", adminToken, `{"rules":[{"name":"slow","p99_ms":200}]}`, 200, "config.put"},
		{"viewer reads configuration", "GET", "/api/v1/config/alert-rules", viewerToken, nil, 200, ""},
		{"viewer cannot act in the monitor", "POST", "/monitor/api/queues/reassembly:pause", viewerToken, nil, 403, "monitor.post"},
		{"anonymous monitor", "GET", "/monitor/", "", nil, 401, "access"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := e.req(c.method, c.path, c.token, c.body)
			if r.status != c.status {
				t.Fatalf("%s %s: %d %s, want %d", c.method, c.path, r.status, truncate(r.body), c.status)
			}
			if c.status == 401 && r.header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
			if c.status == 403 && !strings.Contains(r.errMsg(), "needs the") {
				t.Errorf("403 message %q does not say which role is needed", r.errMsg())
			}
		})
	}
	// Each refusal and each state change left an audit record saying who,
	// what, from where and how it ended.
	recs := e.auditRecords("")
	for _, c := range cases {
		if c.action == "" {
			continue
		}
		found := false
		for _, r := range recs {
			if r.Action == c.action && r.Status == c.status && r.Path == c.path {
				found = true
				if r.Remote != "127.0.0.1" || r.Timestamp.IsZero() || r.Outcome == "" {
					t.Errorf("%s: record %+v lacks where/when/outcome", c.name, r)
				}
				wantOutcome := map[int]string{200: "ok", 202: "ok", 401: "denied", 403: "denied"}[c.status]
				if r.Outcome != wantOutcome {
					t.Errorf("%s: outcome %s, want %s", c.name, r.Outcome, wantOutcome)
				}
				if c.token != "" && c.status != 401 && r.Actor == "anonymous" {
					t.Errorf("%s: actor not recorded", c.name)
				}
			}
		}
		if !found {
			t.Errorf("%s: no audit record of %s %d on %s", c.name, c.action, c.status, c.path)
		}
	}
	denied := e.auditRecords("outcome=denied&actor=operator")
	if len(denied) != 3 {
		t.Errorf("operator's denied records: %d, want 3: %+v", len(denied), denied)
	}
}

func TestSessionLogin(t *testing.T) {
	e := newEnv(t, 1, nil)
	b := e.browser()
	// A failed login is refused and audited.
	if r := e.reqWith(b, "POST", "/api/v1/auth/login", "", map[string]string{"token": "wrong"}, nil); r.status != 401 {
		t.Fatalf("wrong token login: %d", r.status)
	}
	r := e.reqWith(b, "POST", "/api/v1/auth/login", "", map[string]string{"token": operatorToken}, nil)
	if r.status != 200 {
		t.Fatalf("login: %d %s", r.status, r.body)
	}
	var info sessionInfo
	r.json(t, &info)
	if info.Name != "operator" || info.Role != RoleOperator || info.CSRFToken == "" {
		t.Fatalf("login answer %+v", info)
	}
	var sc *http.Cookie
	for _, c := range (&http.Response{Header: r.header}).Cookies() {
		if c.Name == sessionCookie {
			sc = c
		}
	}
	if sc == nil || !sc.HttpOnly || sc.SameSite != http.SameSiteStrictMode || sc.MaxAge <= 0 || sc.Secure {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, an expiry, not Secure without TLS", sc)
	}
	// The cookie alone reads.
	if r := e.reqWith(b, "GET", "/api/v1/services", "", nil, nil); r.status != 200 {
		t.Fatalf("read with session: %d", r.status)
	}
	body := map[string]any{"from": e.base.Format(time.RFC3339), "to": e.base.Add(5 * time.Minute).Format(time.RFC3339)}
	// A state change without the CSRF token is refused ...
	if r := e.reqWith(b, "POST", "/api/v1/reassembly", "", body, nil); r.status != 403 || !strings.Contains(r.errMsg(), "CSRF") {
		t.Fatalf("POST without CSRF: %d %s", r.status, r.body)
	}
	if r := e.reqWith(b, "POST", "/api/v1/reassembly", "", body, map[string]string{csrfHeader: "forged"}); r.status != 403 {
		t.Fatalf("POST with a wrong CSRF token: %d", r.status)
	}
	// ... and passes with it.
	if r := e.reqWith(b, "POST", "/api/v1/reassembly", "", body, map[string]string{csrfHeader: info.CSRFToken}); r.status != 202 {
		t.Fatalf("POST with CSRF: %d %s", r.status, r.body)
	}
	var who sessionInfo
	w := e.reqWith(b, "GET", "/api/v1/auth/session", "", nil, nil)
	w.json(t, &who)
	if who.CSRFToken != info.CSRFToken || who.Via != "session" {
		t.Fatalf("session info %+v", who)
	}
	// Logout needs the CSRF token too, then the session is gone.
	if r := e.reqWith(b, "POST", "/api/v1/auth/logout", "", nil, map[string]string{csrfHeader: info.CSRFToken}); r.status != 204 {
		t.Fatalf("logout: %d %s", r.status, r.body)
	}
	if r := e.reqWith(b, "GET", "/api/v1/services", "", nil, nil); r.status != 401 {
		t.Fatalf("read after logout: %d", r.status)
	}
	logins := e.auditRecords("action=login")
	var ok, denied int
	for _, r := range logins {
		switch r.Outcome {
		case schemas.AuditOK:
			ok++
			if r.Actor != "operator" {
				t.Errorf("login record actor %q", r.Actor)
			}
		case schemas.AuditDenied:
			denied++
		}
	}
	if ok != 1 || denied != 1 {
		t.Fatalf("login records: %d ok, %d denied: %+v", ok, denied, logins)
	}
	if len(e.auditRecords("action=logout")) != 1 {
		t.Fatal("logout not audited")
	}

	// Ten failures a minute from one address block the next attempt, even
	// with a good token.
	for i := 0; i < maxLoginFailures-1; i++ {
		e.req("POST", "/api/v1/auth/login", "", map[string]string{"token": "wrong"})
	}
	if r := e.req("POST", "/api/v1/auth/login", "", map[string]string{"token": adminToken}); r.status != 429 {
		t.Fatalf("login after %d failures: %d", maxLoginFailures, r.status)
	}
}

func TestSessionEndsWithItsToken(t *testing.T) {
	e := newEnv(t, 1, nil)
	var made struct {
		Token string `json:"token"`
	}
	r := e.req("POST", "/api/v1/tokens", adminToken, map[string]string{"name": "ci-bot", "role": "operator"})
	if r.status != 201 {
		t.Fatalf("create token: %d %s", r.status, r.body)
	}
	r.json(t, &made)
	b := e.browser()
	if r := e.reqWith(b, "POST", "/api/v1/auth/login", "", map[string]string{"token": made.Token}, nil); r.status != 200 {
		t.Fatalf("login with the new token: %d", r.status)
	}
	if r := e.req("GET", "/api/v1/services", made.Token, nil); r.status != 200 {
		t.Fatalf("bearer with the new token: %d", r.status)
	}
	var list struct {
		Tokens []TokenInfo `json:"tokens"`
	}
	e.req("GET", "/api/v1/tokens", adminToken, nil).json(t, &list)
	if len(list.Tokens) != 4 || strings.Contains(fmt.Sprint(list), made.Token) {
		t.Fatalf("token list %+v", list)
	}
	if r := e.req("POST", "/api/v1/tokens", adminToken, map[string]string{"name": "ci-bot", "role": "viewer"}); r.status != 409 {
		t.Fatalf("duplicate name: %d", r.status)
	}
	if r := e.req("DELETE", "/api/v1/tokens/admin", adminToken, nil); r.status != 409 {
		t.Fatalf("revoking a configured token: %d", r.status)
	}
	if r := e.req("DELETE", "/api/v1/tokens/ci-bot", adminToken, nil); r.status != 204 {
		t.Fatalf("revoke: %d %s", r.status, r.body)
	}
	if r := e.req("GET", "/api/v1/services", made.Token, nil); r.status != 401 {
		t.Fatalf("bearer after revoke: %d", r.status)
	}
	if r := e.reqWith(b, "GET", "/api/v1/services", "", nil, nil); r.status != 401 {
		t.Fatalf("session after revoke: %d", r.status)
	}
	if n := len(e.auditRecords("action=token.create&outcome=ok")); n != 1 {
		t.Fatalf("token.create ok records: %d", n)
	}
	if n := len(e.auditRecords("action=token.revoke")); n != 3-1 {
		t.Fatalf("token.revoke records: %d (the refused and the done one)", n)
	}
}

// TestCacheAndReassembly: a repeated search is a cache hit; a reassembly
// job fans out into tasks on the reassembly queue, its progress shows, and
// when it finishes the cached results of its range are invalidated, so the
// next search sees the rewritten traces.
func TestCacheAndReassembly(t *testing.T) {
	e := newEnv(t, 40, nil)
	q := "/api/v1/traces?limit=5&" + e.rangeQuery()
	var first, second traceSearchResult
	if r := e.get(q, &first); r.header.Get("X-Cache") != "miss" {
		t.Fatalf("first search X-Cache %q", r.header.Get("X-Cache"))
	}
	if r := e.get(q, &second); r.header.Get("X-Cache") != "hit" {
		t.Fatalf("second search X-Cache %q", r.header.Get("X-Cache"))
	}
	if fmt.Sprint(first) != fmt.Sprint(second) {
		t.Fatal("the hit differs from the miss")
	}
	newest := e.traces[len(e.traces)-1]
	if r := e.get("/api/v1/traces/"+newest.TraceID, nil); r.header.Get("X-Cache") != "miss" {
		t.Fatal("first fetch was not a miss")
	}
	if r := e.get("/api/v1/traces/"+newest.TraceID, nil); r.header.Get("X-Cache") != "hit" {
		t.Fatal("second fetch was not a hit")
	}
	// A search over another day is cached too and must survive the job.
	other := "/api/v1/traces?from=2026-01-01T00:00:00Z&to=2026-01-01T01:00:00Z"
	e.get(other, nil)

	r := e.req("POST", "/api/v1/reassembly", operatorToken, map[string]any{
		"from": e.base.Format(time.RFC3339), "to": e.base.Add(10 * time.Minute).Format(time.RFC3339), "window": "5m", "shards": 3,
	})
	if r.status != 202 {
		t.Fatalf("start reassembly: %d %s", r.status, r.body)
	}
	var job jobs.JobStatus
	r.json(t, &job)
	if job.Total != 2*3 || job.State != jobs.StateRunning || r.header.Get("Location") != "/api/v1/reassembly/"+job.ID {
		t.Fatalf("job %+v location %q", job, r.header.Get("Location"))
	}
	pending, err := e.inspectPending()
	if err != nil || len(pending) != job.Total {
		t.Fatalf("%d tasks on the reassembly queue (%v), want %d", len(pending), err, job.Total)
	}

	// The "worker": rewrite the newest trace (its root operation changes),
	// then report the tasks.
	re := newest
	re.RootOperation = "GET /reassembled"
	re.AssembledAt = time.Now().UTC()
	e.write(re)
	for i := 0; i < job.Total-1; i++ {
		if err := jobs.JobDone(context.Background(), e.rdb, job.ID, i != 2); err != nil {
			t.Fatal(err)
		}
	}
	var mid jobs.JobStatus
	e.get("/api/v1/reassembly/"+job.ID, &mid)
	if mid.Done != job.Total-2 || mid.Failed != 1 || mid.State != jobs.StateRunning {
		t.Fatalf("progress %+v", mid)
	}
	// Before the job finishes the cache still answers (the worker did not
	// announce its write).
	if r := e.get(q, nil); r.header.Get("X-Cache") != "hit" {
		t.Fatalf("search before the job finished: X-Cache %q", r.header.Get("X-Cache"))
	}
	if err := jobs.JobDone(context.Background(), e.rdb, job.ID, true); err != nil {
		t.Fatal(err)
	}
	var done jobs.JobStatus
	e.get("/api/v1/reassembly/"+job.ID, &done)
	if done.State != jobs.StateFailed || done.Done+done.Failed != done.Total || done.Finished.IsZero() {
		t.Fatalf("finished job %+v", done)
	}
	var after traceSearchResult
	r = e.get(q, &after)
	if r.header.Get("X-Cache") != "miss" {
		t.Fatalf("search after the job: X-Cache %q, want a miss", r.header.Get("X-Cache"))
	}
	if after.Traces[0].TraceID != newest.TraceID || after.Traces[0].RootOperation != "GET /reassembled" {
		t.Fatalf("search after the job returned %+v, want the reassembled trace", after.Traces[0])
	}
	var tr schemas.Trace
	if r := e.get("/api/v1/traces/"+newest.TraceID, &tr); r.header.Get("X-Cache") != "miss" || tr.RootOperation != "GET /reassembled" {
		t.Fatalf("fetch after the job: %s %q", r.header.Get("X-Cache"), tr.RootOperation)
	}
	if r := e.get(other, nil); r.header.Get("X-Cache") != "hit" {
		t.Fatalf("a search of another day lost its cache entry: %q", r.header.Get("X-Cache"))
	}
	var list struct {
		Jobs []jobs.JobStatus `json:"jobs"`
	}
	e.get("/api/v1/reassembly", &list)
	if len(list.Jobs) != 1 || list.Jobs[0].ID != job.ID {
		t.Fatalf("job list %+v", list)
	}
	recs := e.auditRecords("action=reassembly.start")
	if len(recs) != 1 || recs[0].Target != job.ID || recs[0].Actor != "operator" || !strings.Contains(recs[0].Detail, "6 tasks") {
		t.Fatalf("reassembly audit %+v", recs)
	}
}

func TestLookbackCache(t *testing.T) {
	e := newEnv(t, 0, nil)
	now := time.Now().UTC()
	recent := synth.Trace(1, now.Add(-5*time.Minute), 4)
	e.write(recent)
	var a traceSearchResult
	e.get("/api/v1/traces?lookback=15m&service=gateway", &a)
	r := e.get("/api/v1/traces?lookback=15m&service=gateway", nil)
	if len(a.Traces) != 1 || r.header.Get("X-Cache") != "hit" {
		t.Fatalf("lookback search: %d traces, second %s", len(a.Traces), r.header.Get("X-Cache"))
	}
	// A worker writing a new trace announces it; the next search sees it.
	e.write(synth.Trace(2, now.Add(-4*time.Minute), 4))
	if err := jobs.InvalidateRange(context.Background(), e.rdb, now.Add(-4*time.Minute), now.Add(-4*time.Minute)); err != nil {
		t.Fatal(err)
	}
	e.get("/api/v1/traces?lookback=15m&service=gateway", &a)
	if len(a.Traces) != 2 {
		t.Fatalf("after invalidation: %d traces, want 2", len(a.Traces))
	}
}

func TestMonitor(t *testing.T) {
	e := newEnv(t, 1, nil)
	if r := e.req("GET", "/monitor/", viewerToken, nil); r.status != 200 || !strings.Contains(string(r.body), "<html") {
		t.Fatalf("monitor page: %d", r.status)
	}
	if r := e.req("GET", "/monitor/api/queues", viewerToken, nil); r.status != 200 {
		t.Fatalf("monitor API as viewer: %d %s", r.status, r.body)
	}
	// Give the queue a task so that it exists, then pause it as operator.
	e.req("POST", "/api/v1/reassembly", operatorToken, map[string]any{
		"from": e.base.Format(time.RFC3339), "to": e.base.Add(time.Minute).Format(time.RFC3339)})
	if r := e.req("POST", "/monitor/api/queues/reassembly:pause", operatorToken, nil); r.status != 204 && r.status != 200 {
		t.Fatalf("pause as operator: %d %s", r.status, r.body)
	}
	if r := e.req("POST", "/monitor/api/queues/reassembly:resume", operatorToken, nil); r.status >= 300 {
		t.Fatalf("resume as operator: %d %s", r.status, r.body)
	}
	// A session acting in the monitor passes with a same-origin Origin
	// and is refused with another.
	b := e.browser()
	e.reqWith(b, "POST", "/api/v1/auth/login", "", map[string]string{"token": operatorToken}, nil)
	host := strings.TrimPrefix(e.http.URL, "http://")
	if r := e.reqWith(b, "POST", "/monitor/api/queues/reassembly:pause", "", nil, map[string]string{"Origin": "http://evil.example"}); r.status != 403 {
		t.Fatalf("cross-site monitor action: %d", r.status)
	}
	if r := e.reqWith(b, "POST", "/monitor/api/queues/reassembly:pause", "", nil, map[string]string{"Origin": "http://" + host}); r.status >= 300 {
		t.Fatalf("same-origin monitor action: %d %s", r.status, r.body)
	}
	recs := e.auditRecords("action=monitor.post")
	if len(recs) != 4 {
		t.Fatalf("monitor actions audited: %d, want 4", len(recs))
	}
}

func TestHealthAndMetrics(t *testing.T) {
	e := newEnv(t, 1, nil)
	if r := e.req("GET", "/healthz", "", nil); r.status != 200 {
		t.Fatalf("healthz %d", r.status)
	}
	var ready struct {
		Ready  bool              `json:"ready"`
		Checks map[string]string `json:"checks"`
	}
	r := e.req("GET", "/readyz", "", nil)
	r.json(t, &ready)
	if r.status != 200 || !ready.Ready || ready.Checks["elasticsearch"] != "ok" || ready.Checks["redis"] != "ok" {
		t.Fatalf("readyz %d %+v", r.status, ready)
	}
	e.get("/api/v1/services", nil)
	e.get("/api/v1/services", nil)
	m := e.get("/metrics", nil)
	for _, want := range []string{
		`deeptrace_api_requests_total{code="200",method="GET",route="/api/v1/services"}`,
		`deeptrace_api_cache_lookups_total{endpoint="v1.services",result="hit"} 1`,
		`deeptrace_api_request_duration_seconds_bucket`,
	} {
		if !strings.Contains(string(m.body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// Readiness fails, naming Redis, when Redis is gone.
	down := newEnv(t, 0, nil)
	down.rdb.Close()
	r = down.req("GET", "/readyz", "", nil)
	r.json(t, &ready)
	if r.status != 503 || ready.Checks["redis"] == "ok" || ready.Checks["elasticsearch"] != "ok" {
		t.Fatalf("readyz with Redis closed: %d %+v", r.status, ready)
	}
}

func TestDashboardAssets(t *testing.T) {
	e := newEnv(t, 0, nil)
	b := e.browser()
	if r := e.reqWith(b, "GET", "/", "", nil, nil); r.status != 302 || r.header.Get("Location") != "/ui/" {
		t.Fatalf("/ -> %d %s", r.status, r.header.Get("Location"))
	}
	for _, p := range []string{"/ui/", "/ui/traces/abc"} {
		if r := e.reqWith(b, "GET", p, "", nil, nil); r.status != 200 || !strings.Contains(string(r.body), "<html") {
			t.Fatalf("%s: %d", p, r.status)
		}
	}
	// A relative asset link followed from a client-side route finds the
	// asset, not index.html.
	_ = fs.WalkDir(web.FS(), ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(name, ".html") {
			return err
		}
		r := e.reqWith(b, "GET", "/ui/traces/abc/"+name, "", nil, nil)
		if r.status != 200 || strings.Contains(string(r.body), "<html") {
			t.Fatalf("asset %s from a route: %d, or index.html instead", name, r.status)
		}
		return nil
	})
	if got := resolveAsset(fstest.MapFS{"assets/app.js": {}, "index.html": {}}, "traces/abc/assets/app.js"); got != "assets/app.js" {
		t.Fatalf("resolveAsset = %s", got)
	}
}

// TestAnonymousAuditBudget: refused requests without credentials are all
// audited up to a budget per address and minute, then summarized once, so
// a flood cannot become a flood of audit writes.
func TestAnonymousAuditBudget(t *testing.T) {
	e := newEnv(t, 0, nil)
	for attempt := 0; ; attempt++ {
		minute := time.Now().Unix() / 60
		for i := 0; i < maxAnonymousAudits+20; i++ {
			if r := e.req("GET", "/api/v1/services", "", nil); r.status != 401 {
				t.Fatalf("anonymous request: %d", r.status)
			}
		}
		if time.Now().Unix()/60 == minute {
			break
		}
		if attempt == 1 {
			t.Skip("crossed a minute boundary twice")
		}
		e = newEnv(t, 0, nil)
	}
	if n := len(e.auditRecords("actor=anonymous&action=access")); n != maxAnonymousAudits {
		t.Fatalf("%d anonymous refusals audited, want %d", n, maxAnonymousAudits)
	}
	if n := len(e.auditRecords("action=audit.suppressed")); n != 1 {
		t.Fatalf("%d suppression records, want 1", n)
	}
	m := e.get("/metrics", nil)
	if !strings.Contains(string(m.body), "deeptrace_api_audit_suppressed_total 20") {
		t.Fatal("suppressed refusals not counted")
	}
}
