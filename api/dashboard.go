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
		name = resolveAsset(assets, name)
		if name == "index.html" {
			c.Response().Header().Set("Cache-Control", "no-cache")
		}
		return echo.StaticFileHandler(name, assets)(c)
	})
}

// resolveAsset maps a path under /ui/ to a file of the dashboard. A path
// that names a file is that file. Relative asset links ("./assets/x.js")
// requested from a client-side route (/ui/traces/abc) arrive with the
// route's directories in front: the shortest suffix that names a file is
// served. Anything else is a client-side route and gets index.html.
func resolveAsset(assets fs.FS, name string) string {
	isFile := func(n string) bool {
		st, err := fs.Stat(assets, n)
		return err == nil && !st.IsDir()
	}
	if isFile(name) {
		return name
	}
	if path.Ext(name) != "" {
		for rest := name; strings.Contains(rest, "/"); {
			_, rest, _ = strings.Cut(rest, "/")
			if isFile(rest) {
				return rest
			}
		}
	}
	return "index.html"
}
