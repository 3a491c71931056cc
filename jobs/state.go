package jobs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The assembly state the scheduler and the workers share in Redis, all
// under "deeptrace:asm:":
//
//	deeptrace:asm:watermark          end (unix ns) of the last window the scheduler enqueued
//	deeptrace:asm:done:<ws>          hash "<shard>/<shards>" → unix ns the assembly of that
//	                                 (window, shard) started reading spans
//	deeptrace:asm:requested:<ws>     unix ns a re-assembly of the window was last enqueued
//	deeptrace:asm:gen:<ws>           the window's last re-assembly generation
//	deeptrace:asm:lock:<ws>:<s>/<n>  the lock of a running assembly of (window, shard)
//	deeptrace:asm:latecheck          unix ns of the last late-span check
//	deeptrace:asm:latecheck:lock     one scheduler replica checks at a time
//
// <ws> is the window start in unix nanoseconds.
const (
	keyAsm           = "deeptrace:asm:"
	keyWatermark     = keyAsm + "watermark"
	keyDone          = keyAsm + "done:"
	keyRequested     = keyAsm + "requested:"
	keyGeneration    = keyAsm + "gen:"
	keyLock          = keyAsm + "lock:"
	keyLateCheck     = keyAsm + "latecheck"
	keyLateCheckLock = keyAsm + "latecheck:lock"
)

// State is the assembly bookkeeping in Redis.
type State struct {
	rdb redis.UniversalClient
	// Retention is how long per-window records live (default 48h); it must
	// exceed the scheduler's late-span horizon.
	Retention time.Duration
}

// NewState wraps a Redis client.
func NewState(rdb redis.UniversalClient) *State {
	return &State{rdb: rdb, Retention: 48 * time.Hour}
}

func wkey(prefix string, ws time.Time) string {
	return prefix + strconv.FormatInt(ws.UnixNano(), 10)
}

func shardField(shard, shards int) string { return fmt.Sprintf("%d/%d", shard, shards) }

// Watermark returns the end of the last window enqueued, and false when
// the scheduler never ran.
func (st *State) Watermark(ctx context.Context) (time.Time, bool, error) {
	v, err := st.rdb.Get(ctx, keyWatermark).Int64()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read watermark: %w", err)
	}
	return time.Unix(0, v).UTC(), true, nil
}

// advanceScript sets a key to ARGV[1] only if that is larger: the
// watermark never moves back, whichever replica writes last.
var advanceScript = redis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) return 1 end
return 0`)

// AdvanceWatermark moves the watermark to end unless it is already later.
func (st *State) AdvanceWatermark(ctx context.Context, end time.Time) error {
	if err := advanceScript.Run(ctx, st.rdb, []string{keyWatermark}, end.UnixNano()).Err(); err != nil {
		return fmt.Errorf("advance watermark: %w", err)
	}
	return nil
}

// MarkAssembled records that the assembly of (window, shard) read the
// window's spans as of at.
func (st *State) MarkAssembled(ctx context.Context, ws time.Time, shard, shards int, at time.Time) error {
	k := wkey(keyDone, ws)
	pipe := st.rdb.TxPipeline()
	pipe.HSet(ctx, k, shardField(shard, shards), at.UnixNano())
	pipe.Expire(ctx, k, st.Retention)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("mark window %s shard %d assembled: %w", ws.Format(time.RFC3339), shard, err)
	}
	return nil
}

// Assembled returns, for each shard of the window that was assembled, when
// its assembly read the spans.
func (st *State) Assembled(ctx context.Context, ws time.Time, shards int) (map[int]time.Time, error) {
	m, err := st.rdb.HGetAll(ctx, wkey(keyDone, ws)).Result()
	if err != nil {
		return nil, fmt.Errorf("read window %s assembly marks: %w", ws.Format(time.RFC3339), err)
	}
	out := make(map[int]time.Time, len(m))
	for f, v := range m {
		var s, n int
		if _, err := fmt.Sscanf(f, "%d/%d", &s, &n); err != nil || n != shards {
			continue
		}
		ns, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue
		}
		out[s] = time.Unix(0, ns).UTC()
	}
	return out, nil
}

// nextGeneration numbers a new re-assembly of the window and records when
// it was requested.
func (st *State) nextGeneration(ctx context.Context, ws time.Time, now time.Time) (int, error) {
	pipe := st.rdb.TxPipeline()
	gen := pipe.Incr(ctx, wkey(keyGeneration, ws))
	pipe.Expire(ctx, wkey(keyGeneration, ws), st.Retention)
	pipe.Set(ctx, wkey(keyRequested, ws), now.UnixNano(), st.Retention)
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, fmt.Errorf("window %s: new generation: %w", ws.Format(time.RFC3339), err)
	}
	return int(gen.Val()), nil
}

// requested returns when a re-assembly of the window was last enqueued.
func (st *State) requested(ctx context.Context, ws time.Time) (time.Time, bool, error) {
	v, err := st.rdb.Get(ctx, wkey(keyRequested, ws)).Int64()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, err
	}
	return time.Unix(0, v).UTC(), true, nil
}

// Lock is a held assembly lock of one (window, shard).
type Lock struct {
	rdb   redis.UniversalClient
	key   string
	token string
	ttl   time.Duration
}

// ErrLocked is returned by TryLock when another assembly of the same
// (window, shard) holds the lock.
var ErrLocked = errors.New("assembly of this window and shard is running elsewhere")

// TryLock takes the lock of (window, shard) for ttl, or returns ErrLocked.
// A holder that dies loses it when ttl runs out; a live holder keeps it
// with Extend.
func (st *State) TryLock(ctx context.Context, ws time.Time, shard, shards int, ttl time.Duration) (*Lock, error) {
	var b [12]byte
	_, _ = rand.Read(b[:])
	l := &Lock{rdb: st.rdb, key: wkey(keyLock, ws) + ":" + shardField(shard, shards), token: hex.EncodeToString(b[:]), ttl: ttl}
	ok, err := st.rdb.SetNX(ctx, l.key, l.token, ttl).Result()
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", l.key, err)
	}
	if !ok {
		return nil, ErrLocked
	}
	return l, nil
}

var extendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`)

var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)

// Extend renews the lock for its ttl; false when it was lost (expired and
// maybe taken by another assembly).
func (l *Lock) Extend(ctx context.Context) (bool, error) {
	n, err := extendScript.Run(ctx, l.rdb, []string{l.key}, l.token, l.ttl.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("extend %s: %w", l.key, err)
	}
	return n == 1, nil
}

// Release gives the lock up if it is still ours.
func (l *Lock) Release(ctx context.Context) error {
	if err := releaseScript.Run(ctx, l.rdb, []string{l.key}, l.token).Err(); err != nil {
		return fmt.Errorf("release %s: %w", l.key, err)
	}
	return nil
}
