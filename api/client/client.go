// Package client is a small typed client of DeepTrace's v1 API
// (docs/api.md): trace search and fetch, services, operations, the service
// map and reassembly jobs. The CLI and the tests use it; it authenticates
// with a bearer token, as scripts do (the dashboard uses a cookie session
// instead).
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// Client calls one API server. The zero value is not usable: set BaseURL.
type Client struct {
	// BaseURL is the server's root, e.g. http://127.0.0.1:8080.
	BaseURL string
	// Token is sent as "Authorization: Bearer <token>" when set.
	Token string
	// HTTP does the requests; http.DefaultClient when nil.
	HTTP *http.Client
	// UserAgent names the caller in the API's access log.
	UserAgent string
}

// New returns a client of the server at baseURL with token.
func New(baseURL, token string) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("api url %q: want http://host:port or https://host:port", baseURL)
	}
	return &Client{BaseURL: u.String(), Token: token}, nil
}

// Error is an answer of the API that is not a success: its status and the
// message the API gave.
type Error struct {
	Method, Path string
	Status       int
	Message      string
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("%s %s: %d: %s", e.Method, e.Path, e.Status, msg)
}

// IsNotFound reports whether err is the API's 404.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Status == http.StatusNotFound
}

// do sends a request and decodes a JSON answer into out (when non-nil).
func (c *Client) do(ctx context.Context, method, path string, q url.Values, body, out any) error {
	u := c.BaseURL + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("%s %s: encode body: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	ua := c.UserAgent
	if ua == "" {
		ua = "deeptrace-client"
	}
	req.Header.Set("User-Agent", ua)
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, c.BaseURL+path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode >= 300 {
		e := &Error{Method: method, Path: path, Status: resp.StatusCode}
		var msg struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &msg) == nil && msg.Error != "" {
			e.Message = msg.Error
		} else {
			e.Message = strings.TrimSpace(string(b[:min(len(b), 300)]))
		}
		return e
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*json.RawMessage); ok {
		*raw = append((*raw)[:0], b...)
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Range is a time range: either From and To, or a Lookback from now (or
// from To). The zero Range lets the server choose (its default lookback).
type Range struct {
	From, To time.Time
	Lookback time.Duration
}

func (r Range) values(q url.Values) {
	if !r.From.IsZero() {
		q.Set("from", r.From.UTC().Format(time.RFC3339Nano))
	}
	if !r.To.IsZero() {
		q.Set("to", r.To.UTC().Format(time.RFC3339Nano))
	}
	if r.Lookback > 0 {
		q.Set("lookback", r.Lookback.String())
	}
}

// TraceQuery is a trace search; empty fields do not filter.
type TraceQuery struct {
	Range
	Service   string
	Operation string
	// Tags are key=value filters, all of which must match.
	Tags        []string
	Hosts       []string
	MinDuration time.Duration
	MaxDuration time.Duration
	// ErrorOnly keeps traces with a failed span.
	ErrorOnly bool
	Limit     int
}

// Values is the query as the API's parameters.
func (tq TraceQuery) Values() url.Values {
	q := url.Values{}
	tq.Range.values(q)
	if tq.Service != "" {
		q.Set("service", tq.Service)
	}
	if tq.Operation != "" {
		q.Set("operation", tq.Operation)
	}
	for _, t := range tq.Tags {
		q.Add("tag", t)
	}
	for _, h := range tq.Hosts {
		q.Add("host", h)
	}
	if tq.MinDuration > 0 {
		q.Set("min_duration", tq.MinDuration.String())
	}
	if tq.MaxDuration > 0 {
		q.Set("max_duration", tq.MaxDuration.String())
	}
	if tq.ErrorOnly {
		q.Set("error", "true")
	}
	if tq.Limit > 0 {
		q.Set("limit", strconv.Itoa(tq.Limit))
	}
	return q
}

// TraceSummary is a trace in search results: its search fields, no spans.
type TraceSummary struct {
	TraceID       string    `json:"trace_id"`
	RootService   string    `json:"root_service"`
	RootOperation string    `json:"root_operation"`
	Start         time.Time `json:"start"`
	DurationNs    int64     `json:"duration_ns"`
	SpanCount     int       `json:"span_count"`
	Error         bool      `json:"error"`
	Services      []string  `json:"services"`
	Hosts         []string  `json:"hosts"`
}

// Duration is the trace's duration.
func (t TraceSummary) Duration() time.Duration { return time.Duration(t.DurationNs) }

// TraceSearch is the answer of a search: the traces, newest first, and the
// range the server searched.
type TraceSearch struct {
	Traces []TraceSummary `json:"traces"`
	From   time.Time      `json:"from"`
	To     time.Time      `json:"to"`
	Limit  int            `json:"limit"`
}

// SearchTraces is GET /api/v1/traces.
func (c *Client) SearchTraces(ctx context.Context, tq TraceQuery) (TraceSearch, error) {
	var out TraceSearch
	err := c.do(ctx, http.MethodGet, "/api/v1/traces", tq.Values(), nil, &out)
	return out, err
}

// Trace is GET /api/v1/traces/:id: the whole assembled trace.
func (c *Client) Trace(ctx context.Context, id string) (schemas.Trace, error) {
	var out schemas.Trace
	err := c.do(ctx, http.MethodGet, "/api/v1/traces/"+url.PathEscape(id), nil, nil, &out)
	return out, err
}

// TraceJSON is Trace as the server's JSON, unchanged.
func (c *Client) TraceJSON(ctx context.Context, id string) (json.RawMessage, error) {
	var out json.RawMessage
	err := c.do(ctx, http.MethodGet, "/api/v1/traces/"+url.PathEscape(id), nil, nil, &out)
	return out, err
}

// Services is GET /api/v1/services: the services seen in traces of r (of
// every retained index for the zero Range).
func (c *Client) Services(ctx context.Context, r Range) ([]string, error) {
	q := url.Values{}
	r.values(q)
	var out struct {
		Services []string `json:"services"`
	}
	err := c.do(ctx, http.MethodGet, "/api/v1/services", q, nil, &out)
	return out.Services, err
}

// Operations is GET /api/v1/services/:service/operations.
func (c *Client) Operations(ctx context.Context, service string, r Range) ([]string, error) {
	q := url.Values{}
	r.values(q)
	var out struct {
		Operations []string `json:"operations"`
	}
	err := c.do(ctx, http.MethodGet, "/api/v1/services/"+url.PathEscape(service)+"/operations", q, nil, &out)
	return out.Operations, err
}

// Dependencies is the service map of a range.
type Dependencies struct {
	From    time.Time              `json:"from"`
	To      time.Time              `json:"to"`
	Edges   []store.DependencyEdge `json:"edges"`
	Traces  int                    `json:"traces"`
	Sampled bool                   `json:"sampled"`
}

// Dependencies is GET /api/v1/dependencies; service, when set, keeps the
// edges that touch it.
func (c *Client) Dependencies(ctx context.Context, r Range, service string) (Dependencies, error) {
	q := url.Values{}
	r.values(q)
	if service != "" {
		q.Set("service", service)
	}
	var out Dependencies
	err := c.do(ctx, http.MethodGet, "/api/v1/dependencies", q, nil, &out)
	return out, err
}

// ReassemblyRequest starts a reassembly job over [From, To).
type ReassemblyRequest struct {
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
	Services []string  `json:"services,omitempty"`
	// Window ("5m") and Shards default to the server's configuration.
	Window string `json:"window,omitempty"`
	Shards int    `json:"shards,omitempty"`
}

// StartReassembly is POST /api/v1/reassembly (operator role).
func (c *Client) StartReassembly(ctx context.Context, r ReassemblyRequest) (jobs.JobStatus, error) {
	var out jobs.JobStatus
	err := c.do(ctx, http.MethodPost, "/api/v1/reassembly", nil, r, &out)
	return out, err
}

// Job is GET /api/v1/reassembly/:id: a job's progress.
func (c *Client) Job(ctx context.Context, id string) (jobs.JobStatus, error) {
	var out jobs.JobStatus
	err := c.do(ctx, http.MethodGet, "/api/v1/reassembly/"+url.PathEscape(id), nil, nil, &out)
	return out, err
}

// Jobs is GET /api/v1/reassembly: the newest jobs, at most limit (the
// server's default when 0).
func (c *Client) Jobs(ctx context.Context, limit int) ([]jobs.JobStatus, error) {
	q := url.Values{}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var out struct {
		Jobs []jobs.JobStatus `json:"jobs"`
	}
	err := c.do(ctx, http.MethodGet, "/api/v1/reassembly", q, nil, &out)
	return out.Jobs, err
}

// WatchJob polls job id every interval until it finishes or ctx ends,
// calling progress (when non-nil) with every status it reads, the last
// one included. It returns the final status.
func (c *Client) WatchJob(ctx context.Context, id string, interval time.Duration, progress func(jobs.JobStatus)) (jobs.JobStatus, error) {
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		st, err := c.Job(ctx, id)
		if err != nil {
			return st, err
		}
		if progress != nil {
			progress(st)
		}
		if st.IsFinished() {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-t.C:
		}
	}
}

// Session is who a token or session acts as (GET /api/v1/auth/session).
type Session struct {
	Name string `json:"name"`
	Role string `json:"role"`
	Via  string `json:"via"`
}

// WhoAmI checks the client's credentials.
func (c *Client) WhoAmI(ctx context.Context) (Session, error) {
	var out Session
	err := c.do(ctx, http.MethodGet, "/api/v1/auth/session", nil, nil, &out)
	return out, err
}
