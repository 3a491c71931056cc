package api

import (
	"net/url"
	"strings"
	"testing"
)

// Injection attempts and huge values in every search parameter: each gets
// an answer below 500 (a 4xx naming the problem, or an empty result), none
// widens the search beyond what was asked, and the server keeps serving.
func TestHostileParameters(t *testing.T) {
	e := newEnv(t, 20, func(c *Config) { c.MaxBodyBytes = 4096 })
	rq := e.rangeQuery()
	huge := strings.Repeat("A", 64<<10)
	hostile := []string{
		// Lucene / query_string syntax: must be an exact term, not a query.
		"*", "gateway OR *", `service:*`, `*:*`, `gateway") OR ("a`,
		// JSON breaking out of a query body.
		`"},{"match_all":{}},{"term":{"x":"`, `\u0022}`,
		// Painless / mustache / path tricks.
		"{{_source}}", "doc['service'].value", "../../_cluster/settings", "%00", "\x00", "\r\nX-Injected: 1",
		// Wildcards and regex of the engine.
		"gate*", "/.*/", "gatew?y",
		huge,
	}
	// Not vacuous: an honest search finds the seeded traces.
	var base struct {
		Traces []struct {
			TraceID string `json:"trace_id"`
		} `json:"traces"`
	}
	e.req("GET", "/api/v1/traces?"+rq+"&service="+url.QueryEscape(e.traces[0].RootService), viewerToken, nil).json(t, &base)
	if len(base.Traces) == 0 {
		t.Fatalf("service=%s finds nothing: the test would prove nothing", e.traces[0].RootService)
	}
	params := []string{"service", "operation", "tag", "host"}
	for _, p := range params {
		for _, v := range hostile {
			q := url.Values{}
			q.Set(p, v)
			if p == "operation" {
				q.Set("service", "gateway")
			}
			if p == "tag" {
				q.Set("tag", "http.status_code="+v)
			}
			path := "/api/v1/traces?" + rq + "&" + q.Encode()
			name := p + "=" + v
			if len(name) > 60 {
				name = name[:60] + "…"
			}
			t.Run(name, func(t *testing.T) {
				r := e.req("GET", path, viewerToken, nil)
				if r.status >= 500 {
					t.Fatalf("status %d: %s", r.status, truncate(r.body))
				}
				if r.status != 200 {
					if r.errMsg() == "" && r.status != 414 && r.status != 431 {
						t.Errorf("status %d without a message: %s", r.status, truncate(r.body))
					}
					return
				}
				var got struct {
					Traces []struct {
						TraceID string `json:"trace_id"`
					} `json:"traces"`
				}
				r.json(t, &got)
				if len(got.Traces) > 0 {
					t.Errorf("%s matched %d traces: the value was interpreted, not matched exactly", name, len(got.Traces))
				}
			})
		}
	}
	// Jaeger's API too.
	for _, v := range hostile {
		q := url.Values{}
		q.Set("service", v)
		r := e.req("GET", "/api/traces?"+q.Encode(), viewerToken, nil)
		if r.status >= 500 {
			t.Errorf("jaeger service=%.40q: status %d %s", v, r.status, truncate(r.body))
		}
	}
	// Still serving.
	if r := e.req("GET", "/api/v1/traces?"+rq, viewerToken, nil); r.status != 200 {
		t.Fatalf("after hostile input: %d %s", r.status, truncate(r.body))
	}
}
