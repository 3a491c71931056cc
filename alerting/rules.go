package alerting

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis keys of alerting:
//
//	deeptrace:alert:rules       hash rule id → rule JSON
//	deeptrace:alert:state       hash rule id → State JSON
//	deeptrace:alert:history     list of Event JSON, newest first (capped)
//	deeptrace:alert:delivered:<task id>  a delivered notification
//	deeptrace:alert:eval:lock   one evaluator at a time
const (
	keyRules     = "deeptrace:alert:rules"
	keyState     = "deeptrace:alert:state"
	keyHistory   = "deeptrace:alert:history"
	keyDelivered = "deeptrace:alert:delivered:"
	keyEvalLock  = "deeptrace:alert:eval:lock"
)

// ErrNotFound is returned for a rule id that does not exist.
var ErrNotFound = errors.New("alert rule not found")

// Rules stores rules in Redis (with the rest of DeepTrace's configuration;
// run Redis with persistence).
type Rules struct{ rdb redis.UniversalClient }

// NewRules wraps a Redis client.
func NewRules(rdb redis.UniversalClient) *Rules { return &Rules{rdb: rdb} }

// List returns every rule, by name.
func (s *Rules) List(ctx context.Context) ([]Rule, error) {
	m, err := s.rdb.HGetAll(ctx, keyRules).Result()
	if err != nil {
		return nil, fmt.Errorf("list alert rules: %w", err)
	}
	out := make([]Rule, 0, len(m))
	for id, v := range m {
		var r Rule
		if err := json.Unmarshal([]byte(v), &r); err != nil {
			return nil, fmt.Errorf("alert rule %s: %w", id, err)
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Name != out[j].Name {
			return out[i].Name < out[j].Name
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// Get returns one rule.
func (s *Rules) Get(ctx context.Context, id string) (Rule, error) {
	var r Rule
	v, err := s.rdb.HGet(ctx, keyRules, id).Bytes()
	if errors.Is(err, redis.Nil) {
		return r, ErrNotFound
	}
	if err != nil {
		return r, fmt.Errorf("alert rule %s: %w", id, err)
	}
	return r, json.Unmarshal(v, &r)
}

// Create validates and stores a new rule under a fresh id.
func (s *Rules) Create(ctx context.Context, r Rule) (Rule, error) {
	if err := r.Validate(); err != nil {
		return r, err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	r.ID = hex.EncodeToString(b[:])
	r.Version = 1
	r.CreatedAt = time.Now().UTC()
	r.UpdatedAt = r.CreatedAt
	return r, s.save(ctx, r)
}

// Update validates and replaces rule id. Its state is kept: a changed
// threshold applies at the next evaluation.
func (s *Rules) Update(ctx context.Context, id string, r Rule) (Rule, error) {
	old, err := s.Get(ctx, id)
	if err != nil {
		return r, err
	}
	if err := r.Validate(); err != nil {
		return r, err
	}
	r.ID, r.CreatedAt, r.Version, r.UpdatedAt = id, old.CreatedAt, old.Version+1, time.Now().UTC()
	return r, s.save(ctx, r)
}

// Delete removes a rule and its state; its history stays.
func (s *Rules) Delete(ctx context.Context, id string) error {
	n, err := s.rdb.HDel(ctx, keyRules, id).Result()
	if err != nil {
		return fmt.Errorf("delete alert rule %s: %w", id, err)
	}
	if n == 0 {
		return ErrNotFound
	}
	return s.rdb.HDel(ctx, keyState, id).Err()
}

func (s *Rules) save(ctx context.Context, r Rule) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if err := s.rdb.HSet(ctx, keyRules, r.ID, b).Err(); err != nil {
		return fmt.Errorf("save alert rule %s: %w", r.ID, err)
	}
	return nil
}

// States returns every rule's current state, by rule id.
func (s *Rules) States(ctx context.Context) (map[string]State, error) {
	m, err := s.rdb.HGetAll(ctx, keyState).Result()
	if err != nil {
		return nil, fmt.Errorf("alert states: %w", err)
	}
	out := make(map[string]State, len(m))
	for id, v := range m {
		var st State
		if json.Unmarshal([]byte(v), &st) == nil {
			out[id] = st
		}
	}
	return out, nil
}

// History returns the newest transitions first, of one rule when ruleID
// is not empty, at most limit.
func (s *Rules) History(ctx context.Context, ruleID string, limit int) ([]Event, error) {
	vals, err := s.rdb.LRange(ctx, keyHistory, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("alert history: %w", err)
	}
	var out []Event
	for _, v := range vals {
		var e Event
		if json.Unmarshal([]byte(v), &e) != nil || (ruleID != "" && e.RuleID != ruleID) {
			continue
		}
		out = append(out, e)
		if len(out) == limit {
			break
		}
	}
	return out, nil
}
