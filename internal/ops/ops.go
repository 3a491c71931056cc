// Package ops is what every long-running DeepTrace binary shares to be run
// by someone else: structured logs (Logger), the operations endpoint with
// Prometheus metrics and health probes (Serve), and the flags that set both
// (Flags), so that every command spells them the same way.
//
// A command wires it up like this:
//
//	var of ops.Flags // or ops.Flags{Listen: ops.ListenWorker}
//	of.Register(cmd.Flags())
//	...
//	log, err := of.Logger()        // after the flags are parsed
//	reg := ops.NewRegistry()       // Go and process metrics included
//	go ops.Serve(ctx, of.Listen, reg, func(ctx context.Context) error {
//		return store.Ping(ctx)     // what "ready" means for this binary
//	})
package ops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Probe paths the operations endpoint serves. The Kubernetes manifests name
// these; k8s tests check that a running binary answers them.
const (
	PathMetrics = "/metrics"
	PathHealthz = "/healthz"
	PathReadyz  = "/readyz"
)

// Default operations addresses: loopback, one port per component so that
// the whole pipeline runs side by side on one machine. Containers listen on
// 0.0.0.0:9090 instead (set in the manifests' configuration file).
const (
	ListenDefault   = "127.0.0.1:9470"
	ListenAgent     = "127.0.0.1:9471"
	ListenScheduler = "127.0.0.1:9472"
	ListenWorker    = "127.0.0.1:9473"
	ListenAPI       = "127.0.0.1:9474"
	ListenRetention = "127.0.0.1:9475"
)

// ReadyTimeout bounds one call of the ready function.
const ReadyTimeout = 3 * time.Second

// ShutdownTimeout bounds how long Serve waits for in-flight scrapes and
// probes once its context ends.
const ShutdownTimeout = 5 * time.Second

// NewRegistry returns a registry holding the Go runtime, process and build
// information collectors; a binary adds its own metrics to it.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
	)
	return reg
}

// Handler serves PathMetrics from reg (a fresh NewRegistry when nil),
// PathHealthz (200 while the process can answer) and PathReadyz (200 when
// ready returns nil, 503 with its error otherwise; always 200 when ready is
// nil).
func Handler(reg *prometheus.Registry, ready func(context.Context) error) http.Handler {
	if reg == nil {
		reg = NewRegistry()
	}
	mux := http.NewServeMux()
	mux.Handle("GET "+PathMetrics, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET "+PathHealthz, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET "+PathReadyz, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if ready != nil {
			ctx, cancel := context.WithTimeout(r.Context(), ReadyTimeout)
			defer cancel()
			if err := ready(ctx); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintln(w, "not ready:", err)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// Serve listens on addr and serves Handler(reg, ready) until ctx ends, then
// shuts down gracefully and returns nil. An empty addr disables the
// endpoint: Serve then only waits for ctx. A failure to listen is returned
// at once, naming the ops-listen setting.
//
// The endpoint stops when ctx ends: pass the context that ends at SIGTERM
// so that readiness fails while the binary drains its work.
func Serve(ctx context.Context, addr string, reg *prometheus.Registry, ready func(context.Context) error) error {
	if addr == "" {
		<-ctx.Done()
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("ops-listen %s: %w", addr, err)
	}
	return ServeListener(ctx, ln, reg, ready)
}

// ServeListener is Serve on a listener the caller opened (tests listen on
// port 0 and read the address back).
func ServeListener(ctx context.Context, ln net.Listener, reg *prometheus.Registry, ready func(context.Context) error) error {
	srv := &http.Server{
		Handler:           Handler(reg, ready),
		ReadHeaderTimeout: 5 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	slog.Info("ops endpoint listening", "addr", ln.Addr().String(), "paths", []string{PathMetrics, PathHealthz, PathReadyz})
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("ops endpoint %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("ops endpoint %s: shutdown: %w", ln.Addr(), err)
	}
	return nil
}
