// Package api is DeepTrace's query API on echo: trace search and fetch,
// services and operations, the service map, on-demand reassembly jobs, a
// Jaeger-compatible query API (so Jaeger UI and Grafana's Jaeger data source
// work unchanged), the asynq monitor, token and session authentication with
// roles, an audit log of every state-changing call, a Redis query cache,
// health checks and Prometheus metrics. docs/api.md describes every route.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/api/cache"
	"github.com/deeptrace/deeptrace/store"
)

// Deps are the services the API talks to.
type Deps struct {
	Store *store.Store
	Redis redis.UniversalClient
	// Queue enqueues reassembly tasks; made on Redis when nil.
	Queue *asynq.Client
	// Logger receives the access log and errors; slog.Default when nil.
	Logger *slog.Logger
}

// Server is the API server. Build it with New, serve Handler or call Serve.
type Server struct {
	cfg     Config
	st      *store.Store
	rdb     redis.UniversalClient
	queue   *asynq.Client
	cache   *cache.Cache
	tokens  *tokens
	log     *slog.Logger
	echo    *echo.Echo
	metrics *metrics
	closers []func() error // what Close releases
}

// Close releases what the server opened itself (the monitor's Redis
// pool); Serve calls it when it returns. The clients in Deps are the
// caller's.
func (s *Server) Close() error {
	var errs []error
	for _, c := range s.closers {
		errs = append(errs, c())
	}
	s.closers = nil
	return errors.Join(errs...)
}

// New builds the server and its routes. It does not contact the engines;
// /readyz says whether they answer.
func New(cfg Config, d Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.Store == nil || d.Redis == nil {
		return nil, errors.New("api: a store and a Redis client are required")
	}
	s := &Server{
		cfg:     cfg,
		st:      d.Store,
		rdb:     d.Redis,
		queue:   d.Queue,
		cache:   cache.New(d.Redis, cache.Config{TTL: cfg.CacheTTL, MaxBytes: cfg.CacheMaxBytes, Timeout: cfg.CacheTimeout, Backoff: cfg.CacheBackoff}),
		tokens:  &tokens{static: cfg.Tokens, rdb: d.Redis},
		log:     d.Logger,
		metrics: newMetrics(),
	}
	if s.queue == nil {
		s.queue = asynq.NewClientFromRedisClient(d.Redis)
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.echo = s.routes()
	return s, nil
}

// Handler is the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.echo }

// Serve answers on ln until ctx ends, then shuts down gracefully (open
// requests get up to 10 s).
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.echo,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       s.cfg.RequestTimeout + 10*time.Second,
		// A 50,000-span trace is tens of megabytes; leave time to send it.
		WriteTimeout:   s.cfg.RequestTimeout + 60*time.Second,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 64 << 10,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() {
		if s.cfg.TLSCert != "" {
			errc <- hs.ServeTLS(ln, s.cfg.TLSCert, s.cfg.TLSKey)
		} else {
			errc <- hs.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return errors.Join(err, s.Close())
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := hs.Shutdown(sctx)
	<-errc
	return errors.Join(err, s.Close())
}

// ListenAndServe listens on the configured address and serves until ctx
// ends.
func (s *Server) ListenAndServe(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
	}
	s.log.Info("api listening", "addr", ln.Addr().String(), "tls", s.cfg.TLSCert != "", "monitor", s.cfg.MonitorPath)
	return s.Serve(ctx, ln)
}

func (s *Server) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.handleError
	if s.cfg.TrustProxy {
		e.IPExtractor = echo.ExtractIPFromXFFHeader()
	} else {
		e.IPExtractor = echo.ExtractIPDirect()
	}
	e.Use(
		middleware.RequestID(),
		s.observe,
		middleware.Recover(),
		middleware.SecureWithConfig(middleware.SecureConfig{
			XSSProtection: "0", ContentTypeNosniff: "nosniff", XFrameOptions: "SAMEORIGIN",
			ReferrerPolicy: "same-origin",
		}),
		middleware.BodyLimit(fmt.Sprintf("%dB", s.cfg.MaxBodyBytes)),
		middleware.GzipWithConfig(middleware.GzipConfig{Level: 1, MinLength: 2048}),
		s.timeout,
	)

	// Probes answer without credentials, so that orchestrators need none;
	// they say nothing but up/down.
	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", s.protect(RoleViewer, "", echo.WrapHandler(s.metrics.handler())))

	// Sessions for the dashboard.
	e.POST("/api/v1/auth/login", s.login)
	e.POST("/api/v1/auth/logout", s.protect(RoleViewer, "logout", s.logout))
	e.GET("/api/v1/auth/session", s.protect(RoleViewer, "", s.whoami))

	// DeepTrace's own API.
	v1 := e.Group("/api/v1")
	v1.GET("/traces", s.protect(RoleViewer, "", s.searchTraces))
	v1.GET("/traces/:id", s.protect(RoleViewer, "", s.getTrace))
	v1.GET("/services", s.protect(RoleViewer, "", s.listServices))
	v1.GET("/services/:service/operations", s.protect(RoleViewer, "", s.listOperations))
	v1.GET("/dependencies", s.protect(RoleViewer, "", s.dependencies))
	v1.POST("/reassembly", s.protect(RoleOperator, "reassembly.start", s.startReassembly))
	v1.GET("/reassembly", s.protect(RoleViewer, "", s.listJobs))
	v1.GET("/reassembly/:id", s.protect(RoleViewer, "", s.getJob))
	v1.GET("/tokens", s.protect(RoleAdmin, "", s.listTokens))
	v1.POST("/tokens", s.protect(RoleAdmin, "token.create", s.createToken))
	v1.DELETE("/tokens/:name", s.protect(RoleAdmin, "token.revoke", s.revokeToken))
	v1.GET("/config/:section", s.protect(RoleViewer, "", s.getConfig))
	v1.PUT("/config/:section", s.protect(RoleAdmin, "config.put", s.putConfig))
	v1.GET("/config/agent", s.protect(RoleViewer, "", s.getAgentConfig))
	v1.PUT("/config/agent", s.protect(RoleAdmin, "config.put", s.putAgentConfig))
	v1.GET("/metrics/series", s.protect(RoleViewer, "", s.metricsSeries))
	v1.GET("/metrics/edges", s.protect(RoleViewer, "", s.metricsEdges))
	v1.GET("/alerts", s.protect(RoleViewer, "", s.listAlerts))
	v1.GET("/alerts/history", s.protect(RoleViewer, "", s.alertHistory))
	v1.GET("/alerts/rules", s.protect(RoleViewer, "", s.listAlertRules))
	v1.POST("/alerts/rules", s.protect(RoleAdmin, "alert.rule.create", s.createAlertRule))
	v1.GET("/alerts/rules/:id", s.protect(RoleViewer, "", s.getAlertRule))
	v1.PUT("/alerts/rules/:id", s.protect(RoleAdmin, "alert.rule.update", s.updateAlertRule))
	v1.DELETE("/alerts/rules/:id", s.protect(RoleAdmin, "alert.rule.delete", s.deleteAlertRule))
	v1.GET("/audit", s.protect(RoleAdmin, "", s.searchAudit))

	// Jaeger's query API, with its parameter names and response shapes.
	j := e.Group("/api")
	j.GET("/services", s.protect(RoleViewer, "", s.jaegerServices))
	j.GET("/services/:service/operations", s.protect(RoleViewer, "", s.jaegerOperationsLegacy))
	j.GET("/operations", s.protect(RoleViewer, "", s.jaegerOperations))
	j.GET("/traces", s.protect(RoleViewer, "", s.jaegerSearch))
	j.GET("/traces/:id", s.protect(RoleViewer, "", s.jaegerTrace))
	j.GET("/dependencies", s.protect(RoleViewer, "", s.jaegerDependencies))

	if s.cfg.MonitorPath != "-" {
		s.mountMonitor(e)
	}
	s.mountDashboard(e)
	return e
}

// timeout bounds each request's context. Handlers that honour it fail with
// context.DeadlineExceeded, which handleError answers with 504.
func (s *Server) timeout(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		ctx, cancel := context.WithTimeout(c.Request().Context(), s.cfg.RequestTimeout)
		defer cancel()
		c.SetRequest(c.Request().WithContext(ctx))
		return next(c)
	}
}

// isJaeger reports whether a path is on Jaeger's API, which answers errors
// in Jaeger's shape.
func isJaeger(path string) bool {
	return strings.HasPrefix(path, "/api/") && !strings.HasPrefix(path, "/api/v1/")
}

// handleError writes an error as JSON: {"error": msg, "status": code} on
// our API, Jaeger's structured response on Jaeger's.
func (s *Server) handleError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, msg := http.StatusInternalServerError, ""
	var he *echo.HTTPError
	var ru *redisUnavailableError
	switch {
	case errors.As(err, &ru):
		// Before the deadline case: a request that ran out of time
		// waiting for Redis is Redis being away, which a retry may fix.
		status, msg = http.StatusServiceUnavailable, ru.message()
		c.Response().Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
		s.log.Warn("redis unavailable", "what", ru.What, "method", c.Request().Method, "path", c.Request().URL.Path, "err", ru.Err)
	case errors.As(err, &he):
		status = he.Code
		msg = fmt.Sprint(he.Message)
		if he.Code == http.StatusRequestEntityTooLarge {
			msg = fmt.Sprintf("request body larger than %d bytes", s.cfg.MaxBodyBytes)
		}
	case errors.Is(err, context.DeadlineExceeded):
		status, msg = http.StatusGatewayTimeout, fmt.Sprintf("request took longer than %s", s.cfg.RequestTimeout)
	case errors.Is(err, context.Canceled):
		status, msg = 499, "client went away"
	case store.IsUnavailable(err):
		// The engine is down or restarting: a client should retry, which
		// it does for a 503, not for a 500.
		status, msg = http.StatusServiceUnavailable, "the search engine is unavailable (down, restarting or overloaded); retry in a few seconds"
		c.Response().Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds))
		s.log.Warn("search engine unavailable", "method", c.Request().Method, "path", c.Request().URL.Path, "err", err)
	default:
		rid := c.Response().Header().Get(echo.HeaderXRequestID)
		s.log.Error("request failed", "method", c.Request().Method, "path", c.Request().URL.Path, "request_id", rid, "err", err)
		msg = "internal error (request id " + rid + "); the server log has the cause"
	}
	if status >= 500 {
		c.Set(ctxErrDetail, err.Error())
	}
	if c.Request().Method == http.MethodHead {
		_ = c.NoContent(status)
		return
	}
	if isJaeger(c.Request().URL.Path) {
		_ = c.JSON(status, jaegerResponse{Errors: []jaegerError{{Code: status, Msg: msg}}})
		return
	}
	_ = c.JSON(status, map[string]any{"error": msg, "status": status})
}

// badRequest is a 400 naming the problem.
func badRequest(format string, args ...any) error {
	return echo.NewHTTPError(http.StatusBadRequest, fmt.Sprintf(format, args...))
}
