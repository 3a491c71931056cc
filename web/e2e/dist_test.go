package e2e

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// TestDistUpToDate rebuilds the dashboard into a temporary folder and
// compares it with the assets committed in api/web/dist, which the API
// binary embeds: a change to web/src without `npm run build` fails here.
// Vite names assets by content hash, so equal sources give equal files.
func TestDistUpToDate(t *testing.T) {
	web, _ := filepath.Abs("..")
	if _, err := os.Stat(filepath.Join(web, "node_modules", ".bin", "vite")); err != nil {
		t.Skip("web/node_modules is not installed (run `cd web && npm ci`), so the committed dashboard build cannot be checked")
	}
	out := t.TempDir()
	cmd := exec.Command("npx", "--no-install", "vite", "build", "--outDir", out, "--emptyOutDir", "--logLevel", "warn")
	cmd.Dir = web
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("vite build: %v\n%s", err, b)
	}
	want := files(t, out)
	got := files(t, filepath.Join(web, "..", "api", "web", "dist"))
	names := func(m map[string][]byte) []string {
		var l []string
		for k := range m {
			l = append(l, k)
		}
		slices.Sort(l)
		return l
	}
	if !slices.Equal(names(got), names(want)) {
		t.Fatalf("api/web/dist holds %v, a fresh build makes %v: run `cd web && npm run build` and commit api/web/dist", names(got), names(want))
	}
	for name, b := range want {
		if !bytes.Equal(got[name], b) {
			t.Fatalf("api/web/dist/%s differs from a fresh build: run `cd web && npm run build`", name)
		}
	}
}

func files(t *testing.T, root string) map[string][]byte {
	m := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(root, p)
		m[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}
