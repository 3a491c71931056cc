// Package web holds the dashboard's built assets, embedded into the API
// binary and served under /ui/. The dashboard's build writes them into
// dist/; index.html is the entry point, and paths that name no file are
// answered with it (client-side routes).
package web

import (
	"embed"
	"io/fs"
)

//go:embed all:dist
var dist embed.FS

// FS is the dashboard's files, rooted at dist/.
func FS() fs.FS {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		panic(err) // dist/ is embedded, so this cannot happen
	}
	return sub
}
