package api

import (
	"net/http"
	"strings"

	"github.com/hibiken/asynqmon"
	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"
)

// sharedRedis hands asynqmon the API's own Redis client instead of letting
// it open another pool.
type sharedRedis struct{ c redis.UniversalClient }

func (r sharedRedis) MakeRedisClient() any { return r.c }

// mountMonitor serves the asynq web monitor (asynqmon) under MonitorPath,
// behind the same authentication as the API: viewers may look, operators
// may act (retry, cancel, delete, pause), and every action is audited as
// "monitor.<method>". A dashboard session's actions pass the CSRF check on
// their same-origin Origin header, since the monitor's pages cannot send
// our CSRF token.
func (s *Server) mountMonitor(e *echo.Echo) {
	mon := asynqmon.New(asynqmon.Options{RootPath: s.cfg.MonitorPath, RedisConnOpt: sharedRedis{s.rdb}})
	h := s.protectBy(func(c echo.Context) (Role, string) {
		if safeMethod(c.Request().Method) {
			return RoleViewer, ""
		}
		return RoleOperator, "monitor." + strings.ToLower(c.Request().Method)
	}, func(c echo.Context) error {
		setAudit(c, c.Request().URL.Path, "")
		mon.ServeHTTP(c.Response(), c.Request())
		return nil
	})
	e.Any(s.cfg.MonitorPath, func(c echo.Context) error {
		return c.Redirect(http.StatusFound, s.cfg.MonitorPath+"/")
	})
	e.Any(s.cfg.MonitorPath+"/*", h)
}
