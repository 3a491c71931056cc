package api

import (
	"io/fs"
	"net/http"
	"path"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/deeptrace/deeptrace/api/web"
)

// mountDashboard serves the dashboard's static assets (api/web) under /ui/
// and redirects / there. The assets carry no data and are public, so the
// login page can load; every call they make to the API is authenticated.
func (s *Server) mountDashboard(e *echo.Echo) {
	assets := web.FS()
	e.GET("/", func(c echo.Context) error { return c.Redirect(http.StatusFound, "/ui/") })
	e.GET("/ui", func(c echo.Context) error { return c.Redirect(http.StatusFound, "/ui/") })
	e.GET("/ui/*", func(c echo.Context) error {
		name := strings.TrimPrefix(path.Clean("/"+c.Param("*")), "/")
		if name == "" {
			name = "index.html"
		}
		if st, err := fs.Stat(assets, name); err != nil || st.IsDir() {
			name = "index.html"
		}
		if name == "index.html" {
			c.Response().Header().Set("Cache-Control", "no-cache")
		}
		return echo.StaticFileHandler(name, assets)(c)
	})
}
