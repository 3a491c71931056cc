package api

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hibiken/asynqmon"
	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"
)

// sharedRedis hands asynqmon a Redis client of ours instead of letting it
// open a pool of its own.
type sharedRedis struct{ c redis.UniversalClient }

func (r sharedRedis) MakeRedisClient() any { return r.c }

// monitorRedis is the client the monitor uses. The API's client gives up
// after a second and retries once (RedisOptions), which suits its short
// calls but not the monitor's bulk actions: "delete all" or "run all" is
// one script over a whole set, which may take longer and must not be sent
// twice. So the monitor gets the same server with 10s reads and no retry,
// in a small pool of its own (closed by Close).
func (s *Server) monitorRedis() redis.UniversalClient {
	c, ok := s.rdb.(*redis.Client)
	if !ok {
		return s.rdb
	}
	o := *c.Options()
	o.ReadTimeout, o.WriteTimeout, o.MaxRetries, o.PoolSize = 10*time.Second, 10*time.Second, -1, 4
	mc := redis.NewClient(&o)
	s.closers = append(s.closers, mc.Close)
	return mc
}

// mountMonitor serves the asynq web monitor (asynqmon) under MonitorPath,
// behind the same authentication as the API: viewers may look, operators
// may act (retry, cancel, delete, pause), and every action is audited as
// "monitor.<method>". A dashboard session's actions pass the CSRF check on
// their same-origin Origin header, since the monitor's pages cannot send
// our CSRF token.
func (s *Server) mountMonitor(e *echo.Echo) {
	mon := asynqmon.New(asynqmon.Options{RootPath: s.cfg.MonitorPath, RedisConnOpt: sharedRedis{s.monitorRedis()}})
	h := s.protectBy(func(c echo.Context) (Role, string) {
		if safeMethod(c.Request().Method) {
			return RoleViewer, ""
		}
		return RoleOperator, "monitor." + strings.ToLower(c.Request().Method)
	}, func(c echo.Context) error {
		setAudit(c, c.Request().URL.Path, "")
		w := &monitorWriter{ResponseWriter: c.Response(), s: s, c: c}
		mon.ServeHTTP(w, c.Request())
		return nil
	})
	e.Any(s.cfg.MonitorPath, func(c echo.Context) error {
		return c.Redirect(http.StatusFound, s.cfg.MonitorPath+"/")
	})
	e.Any(s.cfg.MonitorPath+"/*", h)
}

// monitorWriter turns the monitor's 500s into our 503 while Redis is away.
// asynqmon answers every failed Redis call with a 500 and the raw error; it
// cannot tell a dead Redis from a failed command, so on a 500 Redis is
// pinged: if it does not answer, the caller gets the API's 503 with
// Retry-After instead, and asynqmon's own error text is dropped.
type monitorWriter struct {
	http.ResponseWriter
	s        *Server
	c        echo.Context
	replaced bool
}

func (w *monitorWriter) WriteHeader(code int) {
	if code == http.StatusInternalServerError && !w.replaced {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(w.c.Request().Context()), time.Second)
		err := w.s.rdb.Ping(ctx).Err()
		cancel()
		if redisUnreachable(err) {
			w.replaced = true
			w.s.handleError(redisErr(redisQueues, "", fmt.Errorf("monitor %s: %w", w.c.Request().URL.Path, err)), w.c)
			return
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *monitorWriter) Write(b []byte) (int, error) {
	if w.replaced {
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}
