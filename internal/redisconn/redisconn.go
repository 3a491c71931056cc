// Package redisconn says how every DeepTrace component reaches Redis (the
// scheduler, the workers, the API with its cache, sessions and asynq
// monitor): address, database, password or ACL user, and TLS with the
// server verified against a CA and an optional client certificate. It is
// the one place those options become a go-redis client.
package redisconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/redis/go-redis/v9"
)

// Config says how to reach Redis. The zero value (with an Addr) is a plain
// connection without authentication.
type Config struct {
	// Addr is host:port.
	Addr string
	// Username is the ACL user (Redis 6+); empty authenticates as the
	// default user with Password alone (requirepass). An ACL user without
	// Password must be a nopass user.
	Username string
	Password string
	DB       int

	// TLS turns TLS on, verifying the server against the system's CAs
	// unless CAFile is set. Any of the TLS files or ServerName turns it on
	// too.
	TLS bool
	// CAFile is a PEM file of the CA (or CAs) that sign the server's
	// certificate; only those are trusted then.
	CAFile string
	// CertFile and KeyFile are a PEM client certificate and its key, for a
	// server that authenticates clients (tls-auth-clients yes).
	CertFile, KeyFile string
	// ServerName is the name the server's certificate must carry (the
	// host of Addr when empty).
	ServerName string
}

// TLSEnabled reports whether connections use TLS.
func (c Config) TLSEnabled() bool {
	return c.TLS || c.CAFile != "" || c.CertFile != "" || c.KeyFile != "" || c.ServerName != ""
}

// Validate checks the configuration and names the bad setting by its flag.
func (c Config) Validate() error {
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("redis-addr %q: want host:port: %w", c.Addr, err)
	}
	if c.DB < 0 {
		return fmt.Errorf("redis-db %d: want 0 or more", c.DB)
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return errors.New("redis-client-cert and redis-client-key: give both or neither")
	}
	return nil
}

// TLSConfig is the client TLS configuration, or nil when TLS is off. It
// reads the files, so a missing or malformed one is reported at start.
func (c Config) TLSConfig() (*tls.Config, error) {
	if !c.TLSEnabled() {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.ServerName}
	if tc.ServerName == "" {
		host, _, err := net.SplitHostPort(c.Addr)
		if err != nil {
			return nil, fmt.Errorf("redis-addr %q: %w", c.Addr, err)
		}
		tc.ServerName = host
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("redis-ca-cert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("redis-ca-cert %s: no PEM certificate in it", c.CAFile)
		}
		tc.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("redis-client-cert %s, redis-client-key %s: %w", c.CertFile, c.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Options are the go-redis options of c.
func (c Config) Options() (*redis.Options, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	tc, err := c.TLSConfig()
	if err != nil {
		return nil, err
	}
	password := c.Password
	if c.Username != "" && password == "" {
		// go-redis authenticates only with a password: without one the
		// connection would stay the default user. A nopass user takes
		// any password.
		password = nopassPlaceholder
	}
	return &redis.Options{Addr: c.Addr, Username: c.Username, Password: password, DB: c.DB, TLSConfig: tc}, nil
}

// nopassPlaceholder is the password sent for an ACL user given without
// one (Redis ACL "nopass": any password works).
const nopassPlaceholder = "nopass"

// Client builds a client without contacting Redis: a component that must
// start while Redis is away (the API) reports it in its readiness instead.
// tune adjusts the options first (timeouts, say).
func (c Config) Client(tune ...func(*redis.Options)) (*redis.Client, error) {
	o, err := c.Options()
	if err != nil {
		return nil, err
	}
	for _, f := range tune {
		f(o)
	}
	return redis.NewClient(o), nil
}

// Open builds a client and checks within 5 seconds that Redis answers and
// accepts the credentials; the error names the address and what failed
// (refused, TLS verification, authentication).
func (c Config) Open(ctx context.Context) (*redis.Client, error) {
	rdb, err := c.Client()
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("redis-addr %s%s: %w", c.Addr, c.describe(), err)
	}
	return rdb, nil
}

// describe says how the connection was made, for errors.
func (c Config) describe() string {
	s := ""
	if c.TLSEnabled() {
		s = " (TLS"
		if c.CAFile != "" {
			s += ", CA " + c.CAFile
		}
		s += ")"
	}
	if c.Username != "" {
		s += " as " + c.Username
		if c.Password == "" {
			s += " (no password: a nopass ACL user)"
		}
	}
	return s
}
