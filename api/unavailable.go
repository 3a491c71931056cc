package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/redis/go-redis/v9"
)

// retryAfterSeconds is the Retry-After of a 503 while the search engine or
// Redis is away: about what a restarted server takes to answer again.
const retryAfterSeconds = 5

// redisUnavailableError says Redis could not serve what a request needed
// (What: "sessions", "tokens", "reassembly jobs", …) for now: Redis is down,
// restarting, unreachable or too slow. handleError answers it 503 with
// Retry-After, never 500; a client retries a 503.
type redisUnavailableError struct {
	What string
	// Hint is what still works meanwhile, or what did not happen; said
	// to the caller after the message.
	Hint string
	Err  error
}

func (e *redisUnavailableError) Error() string {
	return fmt.Sprintf("Redis (%s) unreachable: %v", e.What, e.Err)
}

func (e *redisUnavailableError) Unwrap() error { return e.Err }

// message is what the caller is told; the cause stays in the server log.
func (e *redisUnavailableError) message() string {
	msg := fmt.Sprintf("Redis (%s) unreachable, retry in a few seconds", e.What)
	if e.Hint != "" {
		msg += ": " + e.Hint
	}
	return msg
}

// redisErr marks err, the error of a Redis call made for what, as Redis
// being unavailable when it says so (see redisUnreachable). Any other error
// (a wrong type, a refused password, a corrupt record, redis.Nil) is a bug
// or a misconfiguration and is returned unchanged, to answer 500. An error
// a deeper call marked already is marked again with what and hint: the
// outer caller knows better what the request was doing.
func redisErr(what, hint string, err error) error {
	var ru *redisUnavailableError
	if errors.As(err, &ru) {
		return &redisUnavailableError{What: what, Hint: hint, Err: ru.Err}
	}
	if err == nil || !redisUnreachable(err) {
		return err
	}
	return &redisUnavailableError{What: what, Hint: hint, Err: err}
}

// RedisOptions tunes the API's Redis client so that a Redis that hangs (a
// host gone, a partition, a stopped process) is told within about two
// seconds, as a 503, instead of after go-redis' defaults (5s dial, 3s
// reads, three retries: up to about 20s): one-second dial, read and write
// timeouts, one retry, and the request's own deadline honoured. Every
// call the API makes is a short one (the agent configuration's long poll
// polls), so no call needs longer. The query cache has its own, shorter
// bound (Config.CacheTimeout).
func RedisOptions(o *redis.Options) {
	o.ContextTimeoutEnabled = true
	o.DialTimeout = time.Second
	o.ReadTimeout = time.Second
	o.WriteTimeout = time.Second
	o.PoolTimeout = 2 * time.Second
	o.MaxRetries = 1
}

// redisUnreachable reports whether err says Redis could not answer for now,
// as opposed to answering that the command is wrong: no connection (dial
// refused, reset, closed, EOF, a network timeout), the client closed or its
// pool exhausted, the request's deadline passed while talking to it, or a
// server saying it is not ready (LOADING after a restart, MASTERDOWN,
// TRYAGAIN, CLUSTERDOWN, READONLY during a failover, max clients). A
// canceled context is the client going away, not Redis.
func redisUnreachable(err error) bool {
	var ne net.Error
	switch {
	case err == nil, errors.Is(err, redis.Nil), errors.Is(err, context.Canceled):
		return false
	case errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, redis.ErrClosed), errors.Is(err, redis.ErrPoolTimeout), errors.Is(err, redis.ErrPoolExhausted),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.As(err, &ne):
		return true
	}
	return redis.IsLoadingError(err) || redis.IsMasterDownError(err) || redis.IsTryAgainError(err) ||
		redis.IsClusterDownError(err) || redis.IsReadOnlyError(err) || redis.IsMaxClientsError(err)
}

// What each Redis-backed part of the API is called in a 503, and what the
// caller may still do meanwhile.
const (
	redisSessions = "sessions"
	redisTokens   = "tokens"
	redisJobs     = "reassembly jobs"
	redisConfig   = "configuration"
	redisAlerts   = "alert rules"
	redisQueues   = "task queues"

	hintSession       = "the session cannot be checked now and is not ended; bearer tokens from the configuration still work"
	hintLogin         = "no session can be opened now; bearer tokens from the configuration still work"
	hintCreatedTokens = "tokens created through the API cannot be checked now; tokens from the configuration still work"
)
