package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/deeptrace/deeptrace/api/cache"
)

// metrics are the API's Prometheus metrics, on a registry of their own so
// that two servers in one process (tests) do not collide.
type metrics struct {
	reg       *prometheus.Registry
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	cache     *prometheus.CounterVec
	refusals  *prometheus.CounterVec
	auditFail prometheus.Counter
	// auditSuppressed counts refused anonymous requests past the per-address
	// audit budget.
	auditSuppressed prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deeptrace_api_requests_total", Help: "API requests by route, method and status code.",
		}, []string{"route", "method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "deeptrace_api_request_duration_seconds", Help: "API request latency by route.",
			Buckets: []float64{.002, .005, .01, .025, .05, .1, .2, .5, 1, 2.5, 5, 10, 30},
		}, []string{"route", "method"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deeptrace_api_cache_lookups_total", Help: "Query cache lookups by endpoint and result (hit, miss, skip, error).",
		}, []string{"endpoint", "result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deeptrace_api_auth_refusals_total", Help: "Requests refused by authentication (401) or authorization (403).",
		}, []string{"code"}),
		auditFail: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deeptrace_api_audit_write_failures_total", Help: "Audit records that could not be written to the engine (they are logged instead).",
		}),
		auditSuppressed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deeptrace_api_audit_suppressed_total", Help: "Refused anonymous requests not written to the audit log (over 100 a minute from one address).",
		}),
	}
	m.reg.MustRegister(m.requests, m.latency, m.cache, m.refusals, m.auditFail, m.auditSuppressed,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	// Compression is the server's gzip middleware's job; both would
	// compress twice.
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{DisableCompression: true})
}

func (m *metrics) cacheResult(endpoint string, r cache.Result) {
	m.cache.WithLabelValues(endpoint, string(r)).Inc()
}

// observe counts and times every request and writes the access log.
func (s *Server) observe(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		start := time.Now()
		err := next(c)
		if err != nil {
			c.Error(err)
		}
		route := c.Path()
		if route == "" {
			route = "unmatched"
		}
		status := c.Response().Status
		d := time.Since(start)
		s.metrics.requests.WithLabelValues(route, c.Request().Method, strconv.Itoa(status)).Inc()
		s.metrics.latency.WithLabelValues(route, c.Request().Method).Observe(d.Seconds())
		who := ""
		if p, ok := c.Get(ctxPrincipal).(*Principal); ok {
			who = p.Name
		}
		s.log.Info("request", "method", c.Request().Method, "path", c.Request().URL.Path, "status", status,
			"ms", float64(d.Microseconds())/1000, "bytes", c.Response().Size, "remote", c.RealIP(), "who", who,
			"request_id", c.Response().Header().Get(echo.HeaderXRequestID))
		return nil
	}
}
