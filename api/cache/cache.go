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
	"sync/atomic"
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
	// Bypass: Redis failed less than Config.Backoff ago and was not asked.
	Bypass Result = "bypass"
)

// Config tunes a Cache.
type Config struct {
	// TTL is how long an entry lives (default 60s; negative disables the
	// cache).
	TTL time.Duration
	// MaxBytes is the largest value stored (default 4 MiB): one huge trace
	// must not evict the rest of the cache.
	MaxBytes int
	// Timeout bounds the lookup of one query (default 250ms; its store
	// gets that plus 1s per 64 MiB): a Redis that hangs costs a search at
	// most that before the engine answers. The client must honour context
	// deadlines (go-redis ContextTimeoutEnabled).
	Timeout time.Duration
	// Backoff is how long the cache is left alone after a lookup failed
	// (default 5s; negative: never): during an outage searches go
	// straight to the engine instead of each waiting for Redis first.
	Backoff time.Duration
}

// Cache is a Redis-backed cache of rendered query results.
type Cache struct {
	rdb redis.UniversalClient
	cfg Config
	// downUntil is when Redis, having failed, is asked again (unix ns).
	downUntil atomic.Int64
}

// New returns a cache on rdb.
func New(rdb redis.UniversalClient, cfg Config) *Cache {
	if cfg.TTL == 0 {
		cfg.TTL = 60 * time.Second
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 4 << 20
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 250 * time.Millisecond
	}
	if cfg.Backoff == 0 {
		cfg.Backoff = 5 * time.Second
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
// Redis failures never fail the query: fn's value is returned with Error,
// and for Config.Backoff after a failed lookup Redis is not asked
// (Bypass). fn's errors are returned as they are and nothing is stored.
func (c *Cache) Do(ctx context.Context, q Query, fn func(context.Context) ([]byte, error)) ([]byte, Result, error) {
	if c == nil || c.cfg.TTL < 0 {
		v, err := fn(ctx)
		return v, Skip, err
	}
	if time.Now().UnixNano() < c.downUntil.Load() {
		v, err := fn(ctx)
		return v, Bypass, err
	}
	key, kerr := c.lookup(ctx, q)
	if kerr == nil && key.hit != nil {
		return key.hit, Hit, nil
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
	// A store may take longer than a lookup (a value of up to MaxBytes),
	// and only this value misses its entry when it fails: it leaves the
	// cache on for the others.
	sctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout+time.Duration(len(v))*time.Second/(64<<20))
	defer cancel()
	if err := c.rdb.Set(sctx, key.name, v, c.cfg.TTL).Err(); err != nil {
		return v, Error, nil
	}
	return v, Miss, nil
}

type lookup struct {
	name string
	hit  []byte
}

// lookup derives q's key and reads it, within Config.Timeout.
func (c *Cache) lookup(ctx context.Context, q Query) (lookup, error) {
	lctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	key, err := c.Key(lctx, q)
	if err != nil {
		c.failed(ctx, err)
		return lookup{}, err
	}
	v, err := c.rdb.Get(lctx, key).Bytes()
	switch {
	case err == nil:
		return lookup{name: key, hit: v}, nil
	case errors.Is(err, redis.Nil):
		return lookup{name: key}, nil
	}
	c.failed(ctx, err)
	return lookup{}, err
}

// failed leaves Redis alone for Config.Backoff after a failure of its own
// (not the caller giving up, nor a key that cannot be encoded).
func (c *Cache) failed(ctx context.Context, err error) {
	var (
		typ *json.UnsupportedTypeError
		val *json.UnsupportedValueError
		mar *json.MarshalerError
	)
	if ctx.Err() != nil || errors.As(err, &typ) || errors.As(err, &val) || errors.As(err, &mar) || c.cfg.Backoff < 0 {
		return
	}
	c.downUntil.Store(time.Now().Add(c.cfg.Backoff).UnixNano())
}
