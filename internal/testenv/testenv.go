// Package testenv gives tests the real engines started by scripts/engines.sh:
// OpenSearch (or Elasticsearch) and Redis. A test that needs one and cannot
// reach it skips, saying why and how to start it; with
// DEEPTRACE_REQUIRE_ENGINES=1 (CI) it fails instead, so a broken engine can
// never turn the suite green by skipping.
package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// Defaults match scripts/engines.sh.
const (
	DefaultESURL     = "http://127.0.0.1:9250"
	DefaultRedisAddr = "127.0.0.1:6399"
)

// ESURL is the engine URL tests use.
func ESURL() string { return env("DEEPTRACE_ES_URL", DefaultESURL) }

// ESEngine is the engine flavour tests assume.
func ESEngine() store.Engine {
	return store.Engine(env("DEEPTRACE_ES_ENGINE", string(store.EngineOpenSearch)))
}

// RedisAddr is the Redis address tests use.
func RedisAddr() string { return env("DEEPTRACE_REDIS_ADDR", DefaultRedisAddr) }

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// unavailable skips or fails the test when an engine is missing.
func unavailable(t testing.TB, what string, err error) {
	t.Helper()
	msg := what + " is not reachable (" + err.Error() + "); start the engines with `./task up` or scripts/engines.sh up"
	if os.Getenv("DEEPTRACE_REQUIRE_ENGINES") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// UniquePrefix returns an index prefix no other test uses.
func UniquePrefix(t testing.TB) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(name) > 30 {
		name = name[:30]
	}
	return "dtt-" + strings.Trim(name, "-.") + "-" + hex.EncodeToString(b[:])
}

// Store connects to the engine with a fresh index prefix, installs the
// templates, and deletes the test's indices when it ends.
func Store(t testing.TB) *store.Store {
	t.Helper()
	s, err := store.Open(store.Config{URLs: []string{ESURL()}, Engine: ESEngine(), Prefix: UniquePrefix(t), Compress: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.Ping(ctx); err != nil {
		unavailable(t, "the search engine at "+ESURL(), err)
	}
	if err := s.EnsureTemplates(ctx, schemas.DefaultTemplateSettings); err != nil {
		t.Fatalf("install templates: %v", err)
	}
	t.Cleanup(func() { DropPrefix(t, s) })
	return s
}

// DropPrefix deletes every index and template under the store's prefix.
func DropPrefix(t testing.TB, s *store.Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var names []string
	for _, k := range schemas.Kinds {
		infos, err := s.ListIndices(ctx, s.Indices().Pattern(k))
		if err != nil {
			t.Logf("cleanup: list %s: %v", k, err)
			continue
		}
		for _, i := range infos {
			names = append(names, i.Name)
		}
	}
	if err := s.DeleteIndices(ctx, names...); err != nil {
		t.Logf("cleanup: %v", err)
	}
	for _, k := range schemas.Kinds {
		res, err := s.Client().Indices.DeleteIndexTemplate(s.Indices().Template(k), s.Client().Indices.DeleteIndexTemplate.WithContext(ctx))
		if err == nil {
			res.Body.Close()
		}
	}
}

// Redis connects to the test Redis and selects a database of its own for
// the test, flushed before and after.
func Redis(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: RedisAddr(), DB: 0})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		unavailable(t, "Redis at "+RedisAddr(), err)
	}
	c.Close()
	db := pickDB(t)
	c = redis.NewClient(&redis.Options{Addr: RedisAddr(), DB: db})
	if err := c.FlushDB(ctx).Err(); err != nil {
		t.Fatalf("flush redis db %d: %v", db, err)
	}
	t.Cleanup(func() {
		c.FlushDB(context.Background())
		c.Close()
	})
	return c
}

// pickDB hands out Redis databases 1..15 to tests of one process; packages
// run in separate processes, so each also claims its database with SETNX
// in database 0 for the test's lifetime.
func pickDB(t testing.TB) int {
	c := redis.NewClient(&redis.Options{Addr: RedisAddr()})
	defer c.Close()
	ctx := context.Background()
	for {
		for db := 1; db < 16; db++ {
			key := "deeptrace:test:db:" + itoa(db)
			ok, err := c.SetNX(ctx, key, t.Name(), 10*time.Minute).Result()
			if err != nil {
				t.Fatalf("claim redis db: %v", err)
			}
			if ok {
				t.Cleanup(func() {
					c := redis.NewClient(&redis.Options{Addr: RedisAddr()})
					c.Del(context.Background(), key)
					c.Close()
				})
				return db
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return "1" + string(rune('0'+i-10))
}

// WriteSpans stores spans as an exporter would, searchable at once: each
// without an ingest time is stamped now. Any span the engine refuses fails
// the test.
func WriteSpans(t testing.TB, st *store.Store, spans []schemas.Span) {
	t.Helper()
	now := time.Now().UTC()
	docs := make([]store.Doc, 0, len(spans))
	for i := range spans {
		s := spans[i]
		if s.IngestedAt.IsZero() {
			s.IngestedAt = now
		}
		d, err := store.SpanDoc(st.Indices(), &s)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, d)
	}
	if res, err := st.Bulk(context.Background(), docs, "true"); err != nil || len(res.Failed) > 0 {
		t.Fatalf("write spans: %v %v", err, res.Failed)
	}
}
