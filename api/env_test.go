package api

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/api/internal/synth"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// The configured test tokens, one per role.
const (
	viewerToken   = "dt_test_viewer_secret"
	operatorToken = "dt_test_operator_secret"
	adminToken    = "dt_test_admin_secret"
)

func spec(t testing.TB, name, role, token string) TokenSpec {
	h := HashToken(token)
	s, err := ParseTokenSpec(name + ":" + role + ":" + hex.EncodeToString(h[:]))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// env is an API server on the real engines, with its own index prefix and
// Redis database, and the traces it was seeded with.
type env struct {
	t      testing.TB
	st     *store.Store
	rdb    *redis.Client
	srv    *Server
	http   *httptest.Server
	base   time.Time // start of the seeded traces
	traces []schemas.Trace
}

// newEnv starts a server seeded with n traces, one every 10 s from base
// (two hours ago, on the hour).
func newEnv(t testing.TB, n int, tweak func(*Config)) *env {
	t.Helper()
	st := testenv.Store(t)
	rdb := testenv.Redis(t)
	cfg := Config{
		Tokens: []TokenSpec{
			spec(t, "viewer", "viewer", viewerToken),
			spec(t, "operator", "operator", operatorToken),
			spec(t, "admin", "admin", adminToken),
		},
	}
	if tweak != nil {
		tweak(&cfg)
	}
	srv, err := New(cfg, Deps{Store: st, Redis: rdb, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, st: st, rdb: rdb, srv: srv, base: time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Hour)}
	for i := 0; i < n; i++ {
		e.traces = append(e.traces, synth.Trace(i, e.at(i), 3+i%9))
	}
	e.write(e.traces...)
	e.http = httptest.NewServer(srv.Handler())
	t.Cleanup(e.http.Close)
	return e
}

// at is the start of seeded trace i.
func (e *env) at(i int) time.Time { return e.base.Add(time.Duration(i) * 10 * time.Second) }

// write stores traces and makes them searchable.
func (e *env) write(traces ...schemas.Trace) {
	e.t.Helper()
	if len(traces) == 0 {
		return
	}
	docs := make([]store.Doc, 0, len(traces))
	for i := range traces {
		d, err := store.TraceDoc(e.st.Indices(), &traces[i])
		if err != nil {
			e.t.Fatal(err)
		}
		docs = append(docs, d)
	}
	res, err := e.st.Bulk(context.Background(), docs, "true")
	if err != nil || len(res.Failed) > 0 {
		e.t.Fatalf("write %d traces: %v %v", len(docs), err, res.Failed)
	}
}

// inspectPending lists the tasks waiting on the reassembly queue.
func (e *env) inspectPending() ([]*asynq.TaskInfo, error) {
	// Not closed: it would close the test's Redis client.
	return asynq.NewInspectorFromRedisClient(e.rdb).ListPendingTasks(jobs.QueueReassembly, asynq.PageSize(1000))
}

// refreshAudit makes the audit records written so far searchable.
func (e *env) refreshAudit() {
	e.t.Helper()
	if err := e.st.Refresh(context.Background(), e.st.Indices().Pattern(schemas.KindAudit)); err != nil {
		e.t.Fatal(err)
	}
}

type response struct {
	status int
	body   []byte
	header http.Header
}

func (r response) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", truncate(r.body), err)
	}
}

// errMsg is the error message of an error answer (ours or Jaeger's).
func (r response) errMsg() string {
	var v struct {
		Error  string `json:"error"`
		Errors []struct {
			Msg string `json:"msg"`
		} `json:"errors"`
	}
	_ = json.Unmarshal(r.body, &v)
	if v.Error == "" && len(v.Errors) > 0 {
		return v.Errors[0].Msg
	}
	return v.Error
}

func truncate(b []byte) string {
	if len(b) > 400 {
		return string(b[:400]) + "…"
	}
	return string(b)
}

// req sends a request with an optional bearer token and JSON body.
func (e *env) req(method, path, token string, body any) response {
	e.t.Helper()
	return e.reqWith(http.DefaultClient, method, path, token, body, nil)
}

func (e *env) reqWith(c *http.Client, method, path, token string, body any, hdr map[string]string) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	r, err := http.NewRequest(method, e.http.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if rd != nil {
		r.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	resp, err := c.Do(r)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return response{status: resp.StatusCode, body: b, header: resp.Header}
}

// get is a GET as the viewer that must answer 200.
func (e *env) get(path string, v any) response {
	e.t.Helper()
	r := e.req("GET", path, viewerToken, nil)
	if r.status != http.StatusOK {
		e.t.Fatalf("GET %s: %d %s", path, r.status, truncate(r.body))
	}
	if v != nil {
		r.json(e.t, v)
	}
	return r
}

// browser is an HTTP client with a cookie jar, like the dashboard.
func (e *env) browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// auditRecords returns the audit records matching query (as admin).
func (e *env) auditRecords(query string) []schemas.AuditRecord {
	e.t.Helper()
	e.refreshAudit()
	var out struct {
		Records []schemas.AuditRecord `json:"records"`
	}
	r := e.req("GET", "/api/v1/audit?lookback=1h&limit=1000&"+query, adminToken, nil)
	if r.status != 200 {
		e.t.Fatalf("audit query: %d %s", r.status, r.body)
	}
	r.json(e.t, &out)
	return out.Records
}
