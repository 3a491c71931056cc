package main

import (
	"context"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/pflag"

	"github.com/deeptrace/deeptrace/internal/redisconn"
)

// redisFlags are the flags that reach Redis, the same for every command
// that uses it (scheduler, worker, api with its cache and asynq monitor).
// The password is best given as DEEPTRACE_REDIS_PASSWORD or in the
// --config file, not on a command line others can read.
type redisFlags struct {
	cfg redisconn.Config
}

// register adds the flags; what says what this command keeps in Redis.
func (f *redisFlags) register(fs *pflag.FlagSet, what string) {
	fs.StringVar(&f.cfg.Addr, "redis-addr", "127.0.0.1:6379", "Redis address ("+what+")")
	fs.StringVar(&f.cfg.Username, "redis-username", "", "Redis ACL user (with --redis-password, or without for a nopass user)")
	fs.StringVar(&f.cfg.Password, "redis-password", "", "Redis password: the ACL user's, or requirepass without --redis-username")
	fs.IntVar(&f.cfg.DB, "redis-db", 0, "Redis database")
	fs.BoolVar(&f.cfg.TLS, "redis-tls", false, "connect with TLS, verifying the server against the system's CAs (implied by the other --redis-tls*, --redis-ca-cert and --redis-client-* flags)")
	fs.StringVar(&f.cfg.CAFile, "redis-ca-cert", "", "PEM CA certificate that signs Redis' TLS certificate (turns TLS on; only this CA is trusted)")
	fs.StringVar(&f.cfg.CertFile, "redis-client-cert", "", "PEM client certificate for a Redis that authenticates clients (tls-auth-clients), with --redis-client-key")
	fs.StringVar(&f.cfg.KeyFile, "redis-client-key", "", "PEM private key of --redis-client-cert")
	fs.StringVar(&f.cfg.ServerName, "redis-tls-server-name", "", "name Redis' certificate must carry (default: the host of --redis-addr)")
}

// open connects and checks that Redis answers and takes the credentials.
func (f *redisFlags) open(ctx context.Context) (*redis.Client, error) { return f.cfg.Open(ctx) }
