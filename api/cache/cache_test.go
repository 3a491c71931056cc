package cache_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/api/cache"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
)

func TestCache(t *testing.T) {
	rdb := testenv.Redis(t)
	ctx := context.Background()
	c := cache.New(rdb, cache.Config{TTL: time.Minute, MaxBytes: 10})
	day := time.Date(2026, 2, 3, 10, 0, 0, 0, time.UTC)
	q := cache.Query{Endpoint: "test", Params: map[string]any{"a": 1}, From: day, To: day.Add(time.Hour)}
	calls := 0
	fn := func(context.Context) ([]byte, error) { calls++; return []byte(`"v"`), nil }
	for i, want := range []cache.Result{cache.Miss, cache.Hit} {
		v, res, err := c.Do(ctx, q, fn)
		if err != nil || res != want || string(v) != `"v"` {
			t.Fatalf("call %d: %s %s %v, want %s", i, v, res, err, want)
		}
	}
	if calls != 1 {
		t.Fatalf("computed %d times", calls)
	}
	// Another day's invalidation keeps the entry; its own day's drops it.
	_ = jobs.InvalidateRange(ctx, rdb, day.Add(48*time.Hour), day.Add(49*time.Hour))
	if _, res, _ := c.Do(ctx, q, fn); res != cache.Hit {
		t.Fatalf("after another day's invalidation: %s", res)
	}
	_ = jobs.InvalidateRange(ctx, rdb, day.Add(30*time.Minute), day.Add(31*time.Minute))
	if _, res, _ := c.Do(ctx, q, fn); res != cache.Miss {
		t.Fatalf("after its range's invalidation: %s", res)
	}
	// Too big is computed but not stored; errors are not stored.
	big := func(context.Context) ([]byte, error) { return []byte(`"0123456789"`), nil }
	q2 := cache.Query{Endpoint: "big"}
	for i := 0; i < 2; i++ {
		if _, res, _ := c.Do(ctx, q2, big); res != cache.Skip {
			t.Fatalf("big value: %s", res)
		}
	}
	boom := errors.New("boom")
	if _, _, err := c.Do(ctx, cache.Query{Endpoint: "err"}, func(context.Context) ([]byte, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("error %v", err)
	}
	// Redis gone: the value is still computed, marked Error.
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer dead.Close()
	v, res, err := cache.New(dead, cache.Config{}).Do(ctx, q, fn)
	if err != nil || res != cache.Error || string(v) != `"v"` {
		t.Fatalf("without Redis: %s %s %v", v, res, err)
	}
	// Once Redis failed, it is left alone for the backoff, then asked
	// again; a query that cannot be keyed is not Redis failing.
	away := cache.New(dead, cache.Config{Backoff: 300 * time.Millisecond})
	for i, want := range []cache.Result{cache.Error, cache.Bypass, cache.Bypass} {
		if v, res, err := away.Do(ctx, q, fn); err != nil || res != want || string(v) != `"v"` {
			t.Fatalf("Redis away, call %d: %s %s %v, want %s", i, v, res, err, want)
		}
	}
	time.Sleep(400 * time.Millisecond)
	if _, res, _ := away.Do(ctx, q, fn); res != cache.Error {
		t.Fatalf("after the backoff: %s, want Redis asked again (error)", res)
	}
	fresh := cache.New(rdb, cache.Config{Backoff: time.Hour})
	if _, _, err := fresh.Do(ctx, cache.Query{Endpoint: "bad", Params: func() {}}, fn); err != nil {
		t.Fatal(err)
	}
	if _, res, _ := fresh.Do(ctx, q, fn); res == cache.Bypass {
		t.Fatal("a query that cannot be keyed turned the cache off")
	}
	// A disabled cache always computes.
	if _, res, _ := cache.New(rdb, cache.Config{TTL: -1}).Do(ctx, q, fn); res != cache.Skip {
		t.Fatalf("disabled cache: %s", res)
	}
}
