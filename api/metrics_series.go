package api

import (
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/worker/rollup"
)

// maxSeriesPoints bounds the points of one series answer.
const maxSeriesPoints = 2000

// metricsSeries is GET /api/v1/metrics/series: the RED metrics of one
// service (scope=service), one of its operations (scope=operation,
// operation=...) or one edge (scope=edge, peer=callee) over a range
// (from/to/lookback), one point per step (whole minutes, default 1m).
// Percentiles of a one-minute step are exact; of longer steps they come
// from merged sketches within 1%.
func (s *Server) metricsSeries(c echo.Context) error {
	q, err := queryParams(c, "scope", "service", "operation", "peer", "from", "to", "lookback", "step")
	if err != nil {
		return err
	}
	r, err := s.parseRange(q, true)
	if err != nil {
		return err
	}
	var f rollup.Filter
	var scope string
	for _, p := range []struct {
		name string
		dst  *string
	}{{"scope", &scope}, {"service", &f.Service}, {"operation", &f.Operation}, {"peer", &f.Peer}} {
		if *p.dst, err = single(q, p.name); err != nil {
			return err
		}
	}
	if f.Service == "" {
		return badRequest("service: required")
	}
	switch {
	case scope == "" && f.Peer != "":
		scope = string(schemas.ScopeEdge)
	case scope == "" && f.Operation != "":
		scope = string(schemas.ScopeOperation)
	case scope == "":
		scope = string(schemas.ScopeService)
	}
	f.Scope = schemas.Scope(scope)
	switch {
	case f.Scope != schemas.ScopeService && f.Scope != schemas.ScopeOperation && f.Scope != schemas.ScopeEdge:
		return badRequest("scope %q: want service, operation or edge", scope)
	case f.Scope == schemas.ScopeOperation && f.Operation == "":
		return badRequest("operation: required for scope operation")
	case f.Scope == schemas.ScopeEdge && f.Peer == "":
		return badRequest("peer: required for scope edge (the callee)")
	}
	step := time.Minute
	if v, _ := single(q, "step"); v != "" {
		if step, err = parseDuration("step", v); err != nil {
			return err
		}
		if step < time.Minute || step%time.Minute != 0 {
			return badRequest("step %q: want whole minutes (1m, 5m, 1h)", v)
		}
	}
	from, to := r.From.Truncate(step), r.To
	if n := to.Sub(from) / step; n > maxSeriesPoints {
		return badRequest("%d points of %s: at most %d; widen the step", n, step, maxSeriesPoints)
	}
	ms, err := rollup.Read(c.Request().Context(), s.st, from, to, f)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{
		"scope": f.Scope, "service": f.Service, "operation": f.Operation, "peer": f.Peer,
		"from": from, "to": to, "step": step.String(), "points": rollup.Series(ms, from, to, step),
	})
}

// metricsEdges is GET /api/v1/metrics/edges: every caller→callee edge's
// rate, errors and latency over the range (the service map's labels).
func (s *Server) metricsEdges(c echo.Context) error {
	q, err := queryParams(c, "from", "to", "lookback", "service")
	if err != nil {
		return err
	}
	r, err := s.parseRange(q, true)
	if err != nil {
		return err
	}
	f := rollup.Filter{Scope: schemas.ScopeEdge}
	if f.Service, err = single(q, "service"); err != nil {
		return err
	}
	from := r.From.Truncate(time.Minute)
	ms, err := rollup.Read(c.Request().Context(), s.st, from, r.To, f)
	if err != nil {
		return err
	}
	edges := rollup.Edges(ms, r.To.Sub(from))
	return c.JSON(http.StatusOK, map[string]any{"from": from, "to": r.To, "edges": nonNil(edges)})
}
