// The dashboard's build: one page, relative asset URLs (so it works under
// /ui/ or behind any path prefix), written into the Go package that embeds
// it, so `go build` needs no npm.
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  oxc: { jsx: { runtime: 'automatic', importSource: 'preact' } },
  build: {
    outDir: '../api/web/dist',
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: false,
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 200,
  },
  server: {
    // `npm run dev` talks to a local `deeptrace api`.
    proxy: { '/api': 'http://127.0.0.1:8080' },
  },
});
