package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/deeptrace/deeptrace/api"
)

// apiFlags are the flags of `deeptrace api`.
type apiFlags struct {
	es         esFlags
	redis      redisFlags
	tokens     []string
	tokenFile  string
	logFormat  string
	logLevel   string
	cfg        api.Config
	maxBodyStr string
}

func apiCmd() *cobra.Command {
	var f apiFlags
	cmd := withEnv(&cobra.Command{
		Use:   "api",
		Short: "Serve the query API, the Jaeger-compatible API, the asynq monitor and the dashboard",
		Long: `Serve DeepTrace's HTTP API (docs/api.md): trace search and fetch, services,
operations, the service map, reassembly jobs, Jaeger's query API under /api/,
the asynq monitor under /monitor/, the dashboard under /ui/, /healthz, /readyz
and /metrics.

Tokens are configured as name:role:sha256hex (role viewer, operator or admin),
never as the token itself: make one with 'deeptrace api new-token --name NAME
--role ROLE', or hash your own with: printf %s "$TOKEN" | sha256sum.
Admins add and revoke more tokens at run time through /api/v1/tokens.
The index templates must be installed first ('deeptrace store init').`,
		RunE: func(c *cobra.Command, _ []string) error { return runAPI(c.Context(), &f) },
	})
	fs := cmd.Flags()
	f.es.register(fs)
	fs.StringVar(&f.cfg.Listen, "listen", "127.0.0.1:8080", "address to serve on")
	f.redis.register(fs, "queue, cache, sessions, tokens, jobs, asynq monitor")
	fs.StringSliceVar(&f.tokens, "token", nil, "bearer token as name:role:sha256hex (repeat, or comma-separate)")
	fs.StringVar(&f.tokenFile, "token-file", "", "file of name:role:sha256hex lines ('#' comments)")
	fs.StringVar(&f.cfg.TLSCert, "tls-cert", "", "PEM certificate to serve HTTPS with (with --tls-key)")
	fs.StringVar(&f.cfg.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.BoolVar(&f.cfg.SecureCookies, "secure-cookies", false, "mark session cookies Secure although TLS ends in front of the API")
	fs.BoolVar(&f.cfg.TrustProxy, "trust-proxy", false, "take client addresses from X-Forwarded-For (only behind a proxy that sets it)")
	fs.DurationVar(&f.cfg.RequestTimeout, "request-timeout", 30*time.Second, "longest a request may work")
	fs.StringVar(&f.maxBodyStr, "max-body", "1MiB", "largest request body (bytes, KiB or MiB)")
	fs.DurationVar(&f.cfg.SessionTTL, "session-ttl", 12*time.Hour, "dashboard session lifetime")
	fs.DurationVar(&f.cfg.CacheTTL, "cache-ttl", 60*time.Second, "query cache entry lifetime (negative disables the cache)")
	fs.IntVar(&f.cfg.CacheMaxBytes, "cache-max-bytes", 4<<20, "largest query result the cache keeps")
	fs.DurationVar(&f.cfg.CacheTimeout, "cache-timeout", 250*time.Millisecond, "longest a search waits for the cache before reading the engine")
	fs.DurationVar(&f.cfg.CacheBackoff, "cache-backoff", 5*time.Second, "how long searches skip the cache after Redis failed")
	fs.DurationVar(&f.cfg.DefaultLookback, "default-lookback", time.Hour, "search range when none is given")
	fs.DurationVar(&f.cfg.MaxRange, "max-range", 31*24*time.Hour, "widest search range accepted")
	fs.IntVar(&f.cfg.DependencyMaxTraces, "dependency-max-traces", 20000, "most traces one service map reads (newest first)")
	fs.DurationVar(&f.cfg.ReassemblyWindow, "reassembly-window", 5*time.Minute, "default window of a reassembly job's tasks")
	fs.IntVar(&f.cfg.ReassemblyShards, "reassembly-shards", 4, "default service shards of a reassembly job (match the scheduler's)")
	fs.StringVar(&f.cfg.MonitorPath, "monitor-path", "/monitor", "where the asynq monitor is mounted (- to disable)")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn or error")

	cmd.AddCommand(newTokenCmd())
	return cmd
}

func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for suffix, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if strings.HasSuffix(s, suffix) {
			s, mult = strings.TrimSuffix(s, suffix), m
			break
		}
	}
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil || n <= 0 {
		return 0, fmt.Errorf("want a positive size such as 1048576, 512KiB or 1MiB")
	}
	return n * mult, nil
}

// loadTokens reads the configured token specs from flags and the token
// file.
func (f *apiFlags) loadTokens() ([]api.TokenSpec, error) {
	lines := append([]string(nil), f.tokens...)
	if f.tokenFile != "" {
		file, err := os.Open(f.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("token-file: %w", err)
		}
		defer file.Close()
		sc := bufio.NewScanner(file)
		for n := 1; sc.Scan(); n++ {
			l := strings.TrimSpace(sc.Text())
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			if _, err := api.ParseTokenSpec(l); err != nil {
				return nil, fmt.Errorf("token-file %s line %d: %w", f.tokenFile, n, err)
			}
			lines = append(lines, l)
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("token-file: %w", err)
		}
	}
	var out []api.TokenSpec
	for _, l := range lines {
		t, err := api.ParseTokenSpec(l)
		if err != nil {
			return nil, fmt.Errorf("token: %w", err)
		}
		out = append(out, t)
	}
	return out, nil
}

func newLogger(format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("log-format %q: want text or json", format)
}

func runAPI(ctx context.Context, f *apiFlags) error {
	log, err := newLogger(f.logFormat, f.logLevel)
	if err != nil {
		return err
	}
	if f.cfg.MaxBodyBytes, err = parseBytes(f.maxBodyStr); err != nil {
		return fmt.Errorf("max-body %q: %w", f.maxBodyStr, err)
	}
	if f.cfg.Tokens, err = f.loadTokens(); err != nil {
		return err
	}
	if len(f.cfg.Tokens) == 0 {
		return errors.New("token: no token configured, so nobody could call the API; add one with --token name:admin:sha256hex (see 'deeptrace api new-token')")
	}
	admin := false
	for _, t := range f.cfg.Tokens {
		admin = admin || t.Role == api.RoleAdmin
	}
	if !admin {
		log.Warn("no admin token configured: tokens and configuration cannot be managed through the API")
	}
	if err := f.cfg.Validate(); err != nil {
		return err
	}
	st, err := f.es.open()
	if err != nil {
		return err
	}
	// The API starts while Redis is away (readiness says so), but not with
	// TLS files it cannot read.
	rdb, err := f.redis.cfg.Client(api.RedisOptions)
	if err != nil {
		return err
	}
	defer rdb.Close()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if _, err := st.Ping(pctx); err != nil {
		log.Warn("search engine not reachable yet; /readyz reports it", "err", err)
	}
	if err := rdb.Ping(pctx).Err(); err != nil {
		log.Warn("Redis not reachable yet; /readyz reports it", "addr", f.redis.cfg.Addr, "err", err)
	}
	cancel()
	srv, err := api.New(f.cfg, api.Deps{Store: st, Redis: rdb, Logger: log})
	if err != nil {
		return err
	}
	return srv.ListenAndServe(ctx)
}

func newTokenCmd() *cobra.Command {
	var name, role string
	cmd := &cobra.Command{
		Use:   "new-token",
		Short: "Make a random token and print it with the name:role:sha256hex line that configures it",
		RunE: func(c *cobra.Command, _ []string) error {
			tok := api.NewToken()
			h := api.HashToken(tok)
			spec := name + ":" + role + ":" + hex.EncodeToString(h[:])
			if _, err := api.ParseTokenSpec(spec); err != nil {
				return err
			}
			fmt.Printf("token (give it to the user; it is not stored): %s\nconfigure with:                              --token %s\n", tok, spec)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "token name (who uses it)")
	cmd.Flags().StringVar(&role, "role", "viewer", "viewer, operator or admin")
	_ = cmd.MarkFlagRequired("name")
	return cmd
}
