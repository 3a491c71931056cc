// Package cache keeps query results in Redis. A key is derived from the
// endpoint, the normalized query and the cache generation of the query's
// time range (jobs.RangeGeneration). Whoever writes traces bumps the
// generations of the range it wrote (jobs.InvalidateRange; a reassembly job
// does it when it finishes), so the next query of an overlapping range
// misses and reads the engine: a hit is never older than the last
// invalidation of its range. The TTL bounds how long a result may lag
// writes that nobody announced.
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/jobs"
)

// Result says how a lookup went.
type Result string

// Results of Cache.Do.
const (
	Hit   Result = "hit"
	Miss  Result = "miss"
	Skip  Result = "skip"  // not stored: too large, or caching disabled
	Error Result = "error" // Redis failed; the value was computed anyway
)

// Config tunes a Cache.
type Config struct {
	// TTL is how long an entry lives (default 60s; negative disables the
	// cache).
	TTL time.Duration
	// MaxBytes is the largest value stored (default 4 MiB): one huge trace
	// must not evict the rest of the cache.
	MaxBytes int
}

// Cache is a Redis-backed cache of rendered query results.
type Cache struct {
	rdb redis.UniversalClient
	cfg Config
}

// New returns a cache on rdb.
func New(rdb redis.UniversalClient, cfg Config) *Cache {
	if cfg.TTL == 0 {
		cfg.TTL = 60 * time.Second
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 4 << 20
	}
	return &Cache{rdb: rdb, cfg: cfg}
}

// TTL is the lifetime of an entry.
func (c *Cache) TTL() time.Duration { return c.cfg.TTL }

const keyPrefix = "deeptrace:qc:"

// Query identifies one cacheable result: the endpoint, its normalized
// parameters (any JSON-encodable value; equal queries must encode equally,
// so sort lists and resolve defaults first), and the time range it reads
// (zero for unbounded queries such as a trace by id).
type Query struct {
	Endpoint string
	Params   any
	From, To time.Time
}

// Key derives the Redis key of q under the current generation of its range.
func (c *Cache) Key(ctx context.Context, q Query) (string, error) {
	p, err := json.Marshal(q.Params)
	if err != nil {
		return "", fmt.Errorf("cache key %s: %w", q.Endpoint, err)
	}
	gen, err := jobs.RangeGeneration(ctx, c.rdb, q.From, q.To)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write([]byte(q.Endpoint))
	h.Write([]byte{0})
	h.Write(p)
	h.Write([]byte{0})
	h.Write([]byte(gen))
	return keyPrefix + q.Endpoint + ":" + hex.EncodeToString(h.Sum(nil)[:20]), nil
}

// Do returns the cached value of q, or computes it with fn and stores it.
// Redis failures never fail the query: fn's value is returned with Error.
// fn's errors are returned as they are and nothing is stored.
func (c *Cache) Do(ctx context.Context, q Query, fn func(context.Context) ([]byte, error)) ([]byte, Result, error) {
	if c == nil || c.cfg.TTL < 0 {
		v, err := fn(ctx)
		return v, Skip, err
	}
	key, kerr := c.Key(ctx, q)
	if kerr == nil {
		v, err := c.rdb.Get(ctx, key).Bytes()
		switch {
		case err == nil:
			return v, Hit, nil
		case !errors.Is(err, redis.Nil):
			kerr = err
		}
	}
	v, err := fn(ctx)
	if err != nil {
		return nil, Miss, err
	}
	if kerr != nil {
		return v, Error, nil
	}
	if len(v) > c.cfg.MaxBytes {
		return v, Skip, nil
	}
	if err := c.rdb.Set(ctx, key, v, c.cfg.TTL).Err(); err != nil {
		return v, Error, nil
	}
	return v, Miss, nil
}
