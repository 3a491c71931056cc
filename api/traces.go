package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/deeptrace/deeptrace/api/cache"
	"github.com/deeptrace/deeptrace/store"
)

// cached answers c with the cached result of q, or computes, stores and
// answers it. The X-Cache header says hit, miss, skip or error.
func (s *Server) cached(c echo.Context, q cache.Query, fn func(context.Context) (any, error)) error {
	body, res, err := s.cache.Do(c.Request().Context(), q, func(ctx context.Context) ([]byte, error) {
		v, err := fn(ctx)
		if err != nil {
			return nil, err
		}
		if raw, ok := v.(json.RawMessage); ok {
			return raw, nil
		}
		return json.Marshal(v)
	})
	if err != nil {
		return err
	}
	s.metrics.cacheResult(q.Endpoint, res)
	c.Response().Header().Set("X-Cache", string(res))
	return c.JSONBlob(http.StatusOK, body)
}

// traceSummary is a trace in search results: its search fields, no spans.
type traceSummary struct {
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

type traceSearchResult struct {
	Traces []traceSummary `json:"traces"`
	From   time.Time      `json:"from"`
	To     time.Time      `json:"to"`
	Limit  int            `json:"limit"`
}

// searchTraces is GET /api/v1/traces: service, operation, tag (repeated
// key=value), host (repeated), min_duration, max_duration, error,
// from/to/lookback, limit.
func (s *Server) searchTraces(c echo.Context) error {
	q, err := queryParams(c, "service", "operation", "tag", "host", "min_duration", "max_duration", "error", "from", "to", "lookback", "limit")
	if err != nil {
		return err
	}
	r, err := s.parseRange(q, true)
	if err != nil {
		return err
	}
	f := store.TraceFilter{From: r.From, To: r.To}
	if f.Service, err = single(q, "service"); err != nil {
		return err
	}
	if f.Operation, err = single(q, "operation"); err != nil {
		return err
	}
	if f.Operation != "" && f.Service == "" {
		return badRequest("operation %q needs a service", f.Operation)
	}
	for _, t := range q["tag"] {
		k, v, ok := strings.Cut(t, "=")
		if !ok {
			return badRequest("tag %q: want key=value", t)
		}
		if err := tagFilter(&f, k, v); err != nil {
			return err
		}
	}
	for _, h := range q["host"] {
		if h = strings.TrimSpace(h); h == "" {
			return badRequest("host: empty value")
		}
		f.Hosts = append(f.Hosts, h)
	}
	minS, _ := single(q, "min_duration")
	maxS, err := single(q, "max_duration")
	if err != nil {
		return err
	}
	if err := durationBounds(&f, minS, maxS); err != nil {
		return err
	}
	if e, _ := single(q, "error"); e != "" {
		b, err := parseBool("error", e)
		if err != nil {
			return err
		}
		if b {
			f.Error = &b
		}
	}
	if f.Limit, err = parseLimit(q, 20, store.MaxTraceLimit); err != nil {
		return err
	}
	normalizeFilter(&f)
	key := f
	key.From, key.To = time.Time{}, time.Time{}
	return s.cached(c, cache.Query{Endpoint: "v1.traces", Params: []any{key, s.cacheRange(r)}, From: r.From, To: r.To},
		func(ctx context.Context) (any, error) {
			traces, err := s.st.SearchTraces(ctx, f, false)
			if err != nil {
				return nil, err
			}
			out := traceSearchResult{Traces: make([]traceSummary, 0, len(traces)), From: r.From, To: r.To, Limit: f.Limit}
			for _, t := range traces {
				out.Traces = append(out.Traces, traceSummary{
					TraceID: t.TraceID, RootService: t.RootService, RootOperation: t.RootOperation,
					Start: t.Timestamp, DurationNs: t.DurationNs, SpanCount: t.SpanCount, Error: t.Error,
					Services: t.Services, Hosts: t.Hosts,
				})
			}
			return out, nil
		})
}

// getTrace is GET /api/v1/traces/:id: the whole stored trace, spans and
// all, from whichever retained index holds it.
func (s *Server) getTrace(c echo.Context) error {
	if _, err := queryParams(c); err != nil {
		return err
	}
	id, err := validTraceID(c.Param("id"))
	if err != nil {
		return err
	}
	return s.cached(c, cache.Query{Endpoint: "v1.trace", Params: id}, func(ctx context.Context) (any, error) {
		src, err := s.st.TraceSource(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			return nil, traceNotFound(id)
		}
		return src, err
	})
}

func traceNotFound(id string) error {
	return echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("trace %s not found: not assembled yet, or its index is past retention", id))
}

// pathParam returns a path parameter unescaped (service names may hold
// '/' or spaces).
func pathParam(c echo.Context, name string) (string, error) {
	v, err := url.PathUnescape(c.Param(name))
	if err != nil || strings.TrimSpace(v) == "" {
		return "", badRequest("%s %q: not a valid path segment", name, c.Param(name))
	}
	return v, nil
}

// listServices is GET /api/v1/services: the services seen in traces of the
// range (from/to/lookback), or of every retained index without one.
func (s *Server) listServices(c echo.Context) error {
	q, err := queryParams(c, "from", "to", "lookback")
	if err != nil {
		return err
	}
	r, err := s.parseRange(q, false)
	if err != nil {
		return err
	}
	return s.cached(c, cache.Query{Endpoint: "v1.services", Params: s.cacheRange(r), From: r.From, To: r.To},
		func(ctx context.Context) (any, error) {
			svcs, err := s.st.Services(ctx, r.From, r.To)
			return map[string]any{"services": nonNil(svcs)}, err
		})
}

// listOperations is GET /api/v1/services/:service/operations.
func (s *Server) listOperations(c echo.Context) error {
	q, err := queryParams(c, "from", "to", "lookback")
	if err != nil {
		return err
	}
	svc, err := pathParam(c, "service")
	if err != nil {
		return err
	}
	r, err := s.parseRange(q, false)
	if err != nil {
		return err
	}
	return s.cached(c, cache.Query{Endpoint: "v1.operations", Params: []any{svc, s.cacheRange(r)}, From: r.From, To: r.To},
		func(ctx context.Context) (any, error) {
			ops, err := s.st.Operations(ctx, svc, r.From, r.To)
			return map[string]any{"service": svc, "operations": nonNil(ops)}, err
		})
}

// dependencies is GET /api/v1/dependencies: the service map of the range,
// with calls, errors, error rate and p50/p90/p99 latency per edge.
func (s *Server) dependencies(c echo.Context) error {
	q, err := queryParams(c, "from", "to", "lookback", "service")
	if err != nil {
		return err
	}
	r, err := s.parseRange(q, true)
	if err != nil {
		return err
	}
	svc, err := single(q, "service")
	if err != nil {
		return err
	}
	return s.cached(c, cache.Query{Endpoint: "v1.dependencies", Params: []any{svc, s.cacheRange(r)}, From: r.From, To: r.To},
		func(ctx context.Context) (any, error) {
			g, err := s.st.Dependencies(ctx, store.DependencyFilter{From: r.From, To: r.To, Service: svc, MaxTraces: s.cfg.DependencyMaxTraces})
			if err != nil {
				return nil, err
			}
			return map[string]any{"from": r.From, "to": r.To, "edges": g.Edges, "traces": g.Traces, "sampled": g.Sampled}, nil
		})
}

func nonNil[T any](v []T) []T {
	if v == nil {
		return []T{}
	}
	return v
}
