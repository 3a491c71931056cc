package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/alerting"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

func TestAlertRulesCRUDAndRoles(t *testing.T) {
	e := newEnv(t, 0, nil)
	rule := map[string]any{"name": "checkout p99", "metric": "p99", "service": "checkout", "op": ">", "threshold": 300, "for": "5m"}
	if r := e.req("POST", "/api/v1/alerts/rules", operatorToken, rule); r.status != http.StatusForbidden {
		t.Fatalf("operator created a rule: %d", r.status)
	}
	bad := map[string]any{"name": "x", "metric": "p95", "service": "checkout", "op": ">"}
	if r := e.req("POST", "/api/v1/alerts/rules", adminToken, bad); r.status != 400 || !strings.Contains(r.errMsg(), "metric") {
		t.Fatalf("invalid rule: %d %s", r.status, r.body)
	}
	r := e.req("POST", "/api/v1/alerts/rules", adminToken, rule)
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var created alerting.Rule
	r.json(t, &created)
	rule["threshold"] = 500
	if r := e.req("PUT", "/api/v1/alerts/rules/"+created.ID, adminToken, rule); r.status != 200 {
		t.Fatalf("update: %d %s", r.status, r.body)
	}
	var list struct {
		Rules []ruleWithState `json:"rules"`
	}
	e.get("/api/v1/alerts/rules", &list)
	if len(list.Rules) != 1 || list.Rules[0].Threshold != 500 || list.Rules[0].Version != 2 || list.Rules[0].State.Status != alerting.StatusOK {
		t.Fatalf("list: %+v", list.Rules)
	}
	if r := e.req("DELETE", "/api/v1/alerts/rules/"+created.ID, adminToken, nil); r.status != http.StatusNoContent {
		t.Fatalf("delete: %d", r.status)
	}
	if r := e.req("GET", "/api/v1/alerts/rules/"+created.ID, viewerToken, nil); r.status != 404 {
		t.Fatalf("deleted rule: %d", r.status)
	}
	var hist struct {
		Events []alerting.Event `json:"events"`
	}
	e.get("/api/v1/alerts/history", &hist)
	var alerts map[string]any
	e.get("/api/v1/alerts", &alerts)
}

func TestMetricsSeriesAndEdges(t *testing.T) {
	e := newEnv(t, 0, nil)
	start := time.Now().UTC().Add(-30 * time.Minute).Truncate(time.Hour)
	var docs []store.Doc
	for i := 0; i < 10; i++ {
		at := start.Add(time.Duration(i) * time.Minute)
		durs := []int64{int64(i+1) * 1e6, int64(i+1) * 2e6}
		for _, m := range []schemas.Metric{
			{Timestamp: at, Scope: schemas.ScopeService, Service: "web", Count: 2, Errors: int64(i % 2), SumNs: durs[0] + durs[1],
				P50Ns: durs[0], P90Ns: durs[1], P99Ns: durs[1], MaxNs: durs[1], Sketch: schemas.SketchOf(durs)},
			{Timestamp: at, Scope: schemas.ScopeEdge, Service: "web", PeerService: "db", Count: 6, Errors: 0, SumNs: 6e6,
				P50Ns: 1e6, P90Ns: 1e6, P99Ns: 1e6, MaxNs: 1e6, Sketch: schemas.SketchOf([]int64{1e6, 1e6, 1e6, 1e6, 1e6, 1e6})},
		} {
			b, _ := json.Marshal(m)
			docs = append(docs, store.Doc{Index: e.st.Indices().Name(schemas.KindMetrics, at),
				ID: schemas.MetricID(at, m.Scope, m.Service, m.Operation, m.PeerService), Body: b})
		}
	}
	if res, err := e.st.Bulk(context.Background(), docs, "true"); err != nil || len(res.Failed) > 0 {
		t.Fatal(err, res.Failed)
	}
	q := url.Values{"service": {"web"}, "from": {start.Format(time.RFC3339)}, "to": {start.Add(10 * time.Minute).Format(time.RFC3339)}}
	var s struct {
		Points []struct {
			Count     int64   `json:"count"`
			Rate      float64 `json:"rate"`
			ErrorRate float64 `json:"error_rate"`
			P99Ns     int64   `json:"p99_ns"`
			Exact     bool    `json:"exact"`
		} `json:"points"`
	}
	e.get("/api/v1/metrics/series?"+q.Encode(), &s)
	if len(s.Points) != 10 || s.Points[3].Count != 2 || s.Points[3].P99Ns != 8e6 || s.Points[3].ErrorRate != 0.5 || !s.Points[3].Exact {
		t.Fatalf("1m series: %+v", s.Points)
	}
	q.Set("step", "5m")
	e.get("/api/v1/metrics/series?"+q.Encode(), &s)
	// Step 2 holds minutes 5..9: durations 6..10 ms and 12..20 ms; p99 is
	// 20 ms within 1%.
	if len(s.Points) != 2 || s.Points[1].Count != 10 || s.Points[1].Rate != 10.0/300 || s.Points[1].Exact {
		t.Fatalf("5m series: %+v", s.Points)
	}
	if p := float64(s.Points[1].P99Ns); p < 20e6*0.99 || p > 20e6*1.01 {
		t.Fatalf("5m p99 %v, want 20ms within 1%%", p)
	}
	if r := e.req("GET", "/api/v1/metrics/series?service=web&step=30s&lookback=1h", viewerToken, nil); r.status != 400 || !strings.Contains(r.errMsg(), "step") {
		t.Fatalf("bad step: %d %s", r.status, r.body)
	}
	var edges struct {
		Edges []struct {
			Caller, Callee string
			Count          int64 `json:"count"`
		} `json:"edges"`
	}
	e.get("/api/v1/metrics/edges?"+url.Values{"from": q["from"], "to": q["to"]}.Encode(), &edges)
	if len(edges.Edges) != 1 || edges.Edges[0].Caller != "web" || edges.Edges[0].Callee != "db" || edges.Edges[0].Count != 60 {
		t.Fatalf("edges: %+v", edges.Edges)
	}
}

func TestAgentConfigETagAndValidation(t *testing.T) {
	e := newEnv(t, 0, nil)
	bad := `{"filters":{"ports":[80,443,70000]}}`
	r := e.req("PUT", "/api/v1/config/agent", adminToken, bad)
	if r.status != 400 || !strings.Contains(r.errMsg(), "filters.ports[2]: 70000 is not a port") {
		t.Fatalf("invalid config: %d %s", r.status, r.body)
	}
	if r := e.req("PUT", "/api/v1/config/agent", adminToken, `{"sampling":{"rate":0.5},"colour":"red"}`); r.status != 400 || !strings.Contains(r.errMsg(), "colour") {
		t.Fatalf("unknown field: %d %s", r.status, r.body)
	}
	r = e.get("/api/v1/config/agent", nil)
	etag0 := r.header.Get("ETag")
	if etag0 == "" {
		t.Fatal("no ETag")
	}
	if r := e.reqWith(http.DefaultClient, "GET", "/api/v1/config/agent", viewerToken, nil, map[string]string{"If-None-Match": etag0}); r.status != 304 {
		t.Fatalf("unchanged config: %d", r.status)
	}
	done := make(chan response, 1)
	go func() {
		done <- e.reqWith(http.DefaultClient, "GET", "/api/v1/config/agent?wait=10s", viewerToken, nil, map[string]string{"If-None-Match": etag0})
	}()
	time.Sleep(300 * time.Millisecond)
	if r := e.req("PUT", "/api/v1/config/agent", adminToken, `{"filters":{"comms":["nginx"]},"sampling":{"rate":0.5}}`); r.status != 200 {
		t.Fatalf("put: %d %s", r.status, r.body)
	}
	select {
	case r := <-done:
		if r.status != 200 || r.header.Get("ETag") == etag0 || !strings.Contains(string(r.body), "nginx") {
			t.Fatalf("long poll: %d %s", r.status, r.body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("long poll did not return on change")
	}
}
