package api

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// Config is the API server's configuration, filled by `deeptrace api` from
// flags and the environment and checked by Validate.
type Config struct {
	// Listen is the address to serve on (default 127.0.0.1:8080).
	Listen string
	// Tokens are the configured bearer tokens ("name:role:sha256hex", see
	// ParseTokenSpec). Admins add more at run time; those live hashed in
	// Redis.
	Tokens []TokenSpec
	// TLSCert and TLSKey serve HTTPS when both are set; session cookies
	// are then Secure.
	TLSCert, TLSKey string
	// SecureCookies marks session cookies Secure without TLS here (TLS
	// ends at a proxy in front).
	SecureCookies bool
	// TrustProxy takes the client address from X-Forwarded-For (only
	// behind a proxy that sets it); otherwise the peer address is used.
	TrustProxy bool

	// RequestTimeout bounds one request's work (default 30s).
	RequestTimeout time.Duration
	// MaxBodyBytes bounds a request body (default 1 MiB).
	MaxBodyBytes int64
	// SessionTTL is a dashboard session's lifetime (default 12h).
	SessionTTL time.Duration

	// CacheTTL is the query cache's entry lifetime (default 60s; negative
	// disables the cache). CacheMaxBytes is its largest entry (4 MiB).
	CacheTTL      time.Duration
	CacheMaxBytes int
	// CacheTimeout bounds a query's cache lookup and store (250ms);
	// CacheBackoff is how long the cache is left alone after Redis failed
	// (5s). Together they keep searches as fast as the engine while Redis
	// hangs or is away.
	CacheTimeout, CacheBackoff time.Duration

	// DefaultLookback is the search range when none is given (1h).
	DefaultLookback time.Duration
	// MaxRange is the widest search range accepted (default 31 days).
	MaxRange time.Duration
	// DependencyMaxTraces caps the traces a service map reads (20000).
	DependencyMaxTraces int

	// ReassemblyWindow and ReassemblyShards are a reassembly job's default
	// window and shard count (5m, 4).
	ReassemblyWindow time.Duration
	ReassemblyShards int

	// MonitorPath is where the asynq monitor is mounted ("/monitor"; "-"
	// to leave it out).
	MonitorPath string
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8080"
	}
	def(&c.RequestTimeout, 30*time.Second)
	def(&c.SessionTTL, 12*time.Hour)
	def(&c.CacheTTL, 60*time.Second)
	def(&c.CacheTimeout, 250*time.Millisecond)
	def(&c.CacheBackoff, 5*time.Second)
	def(&c.DefaultLookback, time.Hour)
	def(&c.MaxRange, 31*24*time.Hour)
	def(&c.ReassemblyWindow, 5*time.Minute)
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.CacheMaxBytes == 0 {
		c.CacheMaxBytes = 4 << 20
	}
	if c.DependencyMaxTraces == 0 {
		c.DependencyMaxTraces = 20000
	}
	if c.ReassemblyShards == 0 {
		c.ReassemblyShards = 4
	}
	if c.MonitorPath == "" {
		c.MonitorPath = "/monitor"
	}
}

// Validate fills defaults and checks the configuration, naming the bad
// setting.
func (c *Config) Validate() error {
	c.setDefaults()
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen %q: %w", c.Listen, err)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("tls-cert and tls-key: give both or neither")
	}
	seen := map[string]bool{}
	for _, t := range c.Tokens {
		if seen[t.Name] {
			return fmt.Errorf("token %q: configured twice", t.Name)
		}
		seen[t.Name] = true
	}
	pos := []struct {
		name string
		d    time.Duration
	}{{"request-timeout", c.RequestTimeout}, {"session-ttl", c.SessionTTL}, {"default-lookback", c.DefaultLookback},
		{"max-range", c.MaxRange}, {"reassembly-window", c.ReassemblyWindow},
		{"cache-timeout", c.CacheTimeout}, {"cache-backoff", c.CacheBackoff}}
	for _, p := range pos {
		if p.d < 0 {
			return fmt.Errorf("%s %s: must be positive", p.name, p.d)
		}
	}
	switch {
	case c.MaxBodyBytes < 1024:
		return fmt.Errorf("max-body %d: at least 1024 bytes", c.MaxBodyBytes)
	case c.DefaultLookback > c.MaxRange:
		return fmt.Errorf("default-lookback %s above max-range %s", c.DefaultLookback, c.MaxRange)
	case c.ReassemblyWindow < time.Second || c.ReassemblyWindow > 24*time.Hour:
		return fmt.Errorf("reassembly-window %s: want 1s..24h", c.ReassemblyWindow)
	case c.ReassemblyShards < 1 || c.ReassemblyShards > 4096:
		return fmt.Errorf("reassembly-shards %d: want 1..4096", c.ReassemblyShards)
	case c.DependencyMaxTraces < 1:
		return fmt.Errorf("dependency-max-traces %d: want at least 1", c.DependencyMaxTraces)
	case c.MonitorPath != "-" && (c.MonitorPath[0] != '/' || len(c.MonitorPath) < 2 || c.MonitorPath[len(c.MonitorPath)-1] == '/'):
		return fmt.Errorf("monitor-path %q: want an absolute path without trailing slash, or - to disable", c.MonitorPath)
	}
	return nil
}
