package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Role is what a token may do. Each role includes the ones below it.
type Role int

// Roles, weakest first.
const (
	RoleNone Role = iota
	// RoleViewer reads traces, services, the service map, jobs, metrics
	// and the monitor.
	RoleViewer
	// RoleOperator also starts reassembly jobs and acts in the monitor.
	RoleOperator
	// RoleAdmin also manages tokens, configuration (alert rules, agent
	// configuration) and reads the audit log.
	RoleAdmin
)

var roleNames = map[Role]string{RoleViewer: "viewer", RoleOperator: "operator", RoleAdmin: "admin"}

func (r Role) String() string {
	if n, ok := roleNames[r]; ok {
		return n
	}
	return "none"
}

// ParseRole reads a role name.
func ParseRole(s string) (Role, error) {
	for r, n := range roleNames {
		if n == s {
			return r, nil
		}
	}
	return RoleNone, fmt.Errorf("role %q: want viewer, operator or admin", s)
}

// MarshalJSON writes the role's name.
func (r Role) MarshalJSON() ([]byte, error) { return json.Marshal(r.String()) }

// UnmarshalJSON reads a role's name.
func (r *Role) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := ParseRole(s)
	*r = v
	return err
}

// TokenSpec is a configured bearer token: its name, role and the SHA-256 of
// the secret. The secret itself never appears in configuration.
type TokenSpec struct {
	Name string
	Role Role
	Hash [sha256.Size]byte
}

var tokenNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.@-]{0,63}$`)

// ParseTokenSpec reads "name:role:sha256hex", the form tokens are
// configured in (flag, environment or file). Make one with
// `printf %s "$TOKEN" | sha256sum`.
func ParseTokenSpec(s string) (TokenSpec, error) {
	parts := strings.Split(strings.TrimSpace(s), ":")
	if len(parts) != 3 {
		return TokenSpec{}, fmt.Errorf("token %q: want name:role:sha256hex", redactSpec(s))
	}
	var t TokenSpec
	if !tokenNameRE.MatchString(parts[0]) {
		return t, fmt.Errorf("token name %q: want lowercase letters, digits, '_', '.', '@', '-', at most 64", parts[0])
	}
	t.Name = parts[0]
	r, err := ParseRole(parts[1])
	if err != nil {
		return t, fmt.Errorf("token %s: %w", t.Name, err)
	}
	t.Role = r
	h, err := hex.DecodeString(parts[2])
	if err != nil || len(h) != sha256.Size {
		return t, fmt.Errorf("token %s: the third field must be the 64-hex SHA-256 of the token, not the token itself", t.Name)
	}
	copy(t.Hash[:], h)
	return t, nil
}

// redactSpec keeps a malformed spec out of error messages beyond its name,
// in case someone pasted a secret.
func redactSpec(s string) string {
	if i := strings.IndexByte(s, ':'); i >= 0 {
		return s[:i] + ":…"
	}
	return "…"
}

// HashToken is the SHA-256 under which a token is stored.
func HashToken(token string) [sha256.Size]byte { return sha256.Sum256([]byte(token)) }

// NewToken makes a random bearer token: "dt_" and 32 random bytes.
func NewToken() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return "dt_" + base64.RawURLEncoding.EncodeToString(b[:])
}

// Principal is who a request acts as.
type Principal struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
	// Via is "token" (bearer) or "session" (dashboard cookie).
	Via string `json:"via"`
	// CSRF is the session's CSRF token (sessions only).
	CSRF string `json:"-"`
	// SessionKey is the session's Redis key (sessions only).
	SessionKey string `json:"-"`
}

// storedToken is an admin-created token as kept in Redis, under the hash of
// the secret.
type storedToken struct {
	Name      string    `json:"name"`
	Role      Role      `json:"role"`
	Hash      string    `json:"hash"`
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by"`
}

const (
	keyToken      = "deeptrace:token:"   // + sha256 hex → storedToken
	keyTokenNames = "deeptrace:tokens"   // hash name → sha256 hex
	keySession    = "deeptrace:session:" // + sha256 hex of the cookie → session
	keyLoginFail  = "deeptrace:loginfail:"
)

var errBadToken = errors.New("invalid token")

// tokens resolves bearer tokens against the configured ones and those in
// Redis.
type tokens struct {
	static []TokenSpec
	rdb    redis.UniversalClient
}

// lookup returns the name and role of a token's hash. Configured tokens are
// compared in constant time, all of them every time.
func (t *tokens) lookup(ctx context.Context, hash [sha256.Size]byte) (string, Role, error) {
	var name string
	var role Role
	for _, s := range t.static {
		if subtle.ConstantTimeCompare(s.Hash[:], hash[:]) == 1 {
			name, role = s.Name, s.Role
		}
	}
	if role != RoleNone {
		return name, role, nil
	}
	hexHash := hex.EncodeToString(hash[:])
	b, err := t.rdb.Get(ctx, keyToken+hexHash).Bytes()
	if errors.Is(err, redis.Nil) {
		return "", RoleNone, errBadToken
	}
	if err != nil {
		return "", RoleNone, redisErr(redisTokens, hintCreatedTokens, fmt.Errorf("look up token: %w", err))
	}
	var st storedToken
	if err := json.Unmarshal(b, &st); err != nil {
		return "", RoleNone, fmt.Errorf("stored token: %w", err)
	}
	if subtle.ConstantTimeCompare([]byte(st.Hash), []byte(hexHash)) != 1 || st.Role == RoleNone {
		return "", RoleNone, errBadToken
	}
	return st.Name, st.Role, nil
}

func (t *tokens) isStatic(name string) bool {
	for _, s := range t.static {
		if s.Name == name {
			return true
		}
	}
	return false
}

// TokenInfo describes a token without its secret.
type TokenInfo struct {
	Name      string    `json:"name"`
	Role      Role      `json:"role"`
	Source    string    `json:"source"` // "config" or "api"
	Created   time.Time `json:"created,omitzero"`
	CreatedBy string    `json:"created_by,omitempty"`
}

func (t *tokens) list(ctx context.Context) ([]TokenInfo, error) {
	var out []TokenInfo
	for _, s := range t.static {
		out = append(out, TokenInfo{Name: s.Name, Role: s.Role, Source: "config"})
	}
	names, err := t.rdb.HGetAll(ctx, keyTokenNames).Result()
	if err != nil {
		return nil, redisErr(redisTokens, "", fmt.Errorf("list tokens: %w", err))
	}
	for name, h := range names {
		b, err := t.rdb.Get(ctx, keyToken+h).Bytes()
		if errors.Is(err, redis.Nil) {
			continue // a name whose creation did not complete
		}
		if err != nil {
			// Not skipped: a list silently missing tokens would hide
			// one an admin means to revoke.
			return nil, redisErr(redisTokens, "", fmt.Errorf("list tokens: token %s: %w", name, err))
		}
		var st storedToken
		if json.Unmarshal(b, &st) == nil {
			out = append(out, TokenInfo{Name: st.Name, Role: st.Role, Source: "api", Created: st.Created, CreatedBy: st.CreatedBy})
		}
	}
	return out, nil
}

var errTokenExists = errors.New("a token with this name exists")

// create stores a new token and returns its secret.
func (t *tokens) create(ctx context.Context, name string, role Role, by string) (string, error) {
	if t.isStatic(name) {
		return "", errTokenExists
	}
	secret := NewToken()
	h := HashToken(secret)
	hexHash := hex.EncodeToString(h[:])
	ok, err := t.rdb.HSetNX(ctx, keyTokenNames, name, hexHash).Result()
	if err != nil {
		return "", redisErr(redisTokens, "", fmt.Errorf("create token: %w", err))
	}
	if !ok {
		return "", errTokenExists
	}
	b, _ := json.Marshal(storedToken{Name: name, Role: role, Hash: hexHash, Created: time.Now().UTC(), CreatedBy: by})
	if err := t.rdb.Set(ctx, keyToken+hexHash, b, 0).Err(); err != nil {
		t.rdb.HDel(ctx, keyTokenNames, name)
		return "", redisErr(redisTokens, "", fmt.Errorf("create token: %w", err))
	}
	return secret, nil
}

var errTokenNotFound = errors.New("no such token")
var errTokenStatic = errors.New("the token is configured, not created through the API; remove it from the configuration")

func (t *tokens) revoke(ctx context.Context, name string) error {
	if t.isStatic(name) {
		return errTokenStatic
	}
	h, err := t.rdb.HGet(ctx, keyTokenNames, name).Result()
	if errors.Is(err, redis.Nil) {
		return errTokenNotFound
	}
	if err != nil {
		return redisErr(redisTokens, "", fmt.Errorf("revoke token: %w", err))
	}
	pipe := t.rdb.TxPipeline()
	pipe.Del(ctx, keyToken+h)
	pipe.HDel(ctx, keyTokenNames, name)
	if _, err = pipe.Exec(ctx); err != nil {
		return redisErr(redisTokens, "", fmt.Errorf("revoke token: %w", err))
	}
	return nil
}

// session is a dashboard login kept in Redis under the hash of its cookie.
// It remembers the hash of the token it was opened with, so that revoking
// the token ends the session and a role change applies at once.
type session struct {
	TokenHash string    `json:"token_hash"`
	CSRF      string    `json:"csrf"`
	Created   time.Time `json:"created"`
	Expires   time.Time `json:"expires"`
	Remote    string    `json:"remote"`
}

func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func sessionKey(cookie string) string {
	h := sha256.Sum256([]byte(cookie))
	return keySession + hex.EncodeToString(h[:])
}

// openSession stores a session for the token hash and returns the cookie
// value and the session.
func (t *tokens) openSession(ctx context.Context, hash [sha256.Size]byte, ttl time.Duration, remote string) (string, session, error) {
	cookie := randomString(32)
	now := time.Now().UTC()
	s := session{TokenHash: hex.EncodeToString(hash[:]), CSRF: randomString(24), Created: now, Expires: now.Add(ttl), Remote: remote}
	b, _ := json.Marshal(s)
	if err := t.rdb.Set(ctx, sessionKey(cookie), b, ttl).Err(); err != nil {
		return "", s, redisErr(redisSessions, hintLogin, fmt.Errorf("open session: %w", err))
	}
	return cookie, s, nil
}

var errNoSession = errors.New("session expired or logged out")

// resolveSession returns the principal of a session cookie.
func (t *tokens) resolveSession(ctx context.Context, cookie string) (Principal, error) {
	key := sessionKey(cookie)
	b, err := t.rdb.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return Principal{}, errNoSession
	}
	if err != nil {
		return Principal{}, redisErr(redisSessions, hintSession, fmt.Errorf("read session: %w", err))
	}
	var s session
	if err := json.Unmarshal(b, &s); err != nil {
		return Principal{}, fmt.Errorf("session: %w", err)
	}
	var h [sha256.Size]byte
	if raw, err := hex.DecodeString(s.TokenHash); err != nil || len(raw) != len(h) {
		return Principal{}, errNoSession
	} else {
		copy(h[:], raw)
	}
	name, role, err := t.lookup(ctx, h)
	if err != nil {
		if errors.Is(err, errBadToken) {
			// The token was revoked: the session goes with it.
			t.rdb.Del(ctx, key)
			return Principal{}, errNoSession
		}
		return Principal{}, redisErr(redisSessions, hintSession, err)
	}
	return Principal{Name: name, Role: role, Via: "session", CSRF: s.CSRF, SessionKey: key}, nil
}

// loginFailed counts a failed login from remote; loginBlocked says when
// maxLoginFailures were counted within a minute.
func (t *tokens) loginFailed(ctx context.Context, remote string) {
	key := keyLoginFail + remote
	pipe := t.rdb.Pipeline()
	pipe.Incr(ctx, key)
	pipe.Expire(ctx, key, time.Minute)
	_, _ = pipe.Exec(ctx)
}

const maxLoginFailures = 10

// loginBlocked fails when Redis cannot say: a login could not open its
// session anyway.
func (t *tokens) loginBlocked(ctx context.Context, remote string) (bool, error) {
	n, err := t.rdb.Get(ctx, keyLoginFail+remote).Int()
	switch {
	case errors.Is(err, redis.Nil):
		return false, nil
	case err != nil:
		return false, redisErr(redisSessions, hintLogin, fmt.Errorf("failed logins of %s: %w", remote, err))
	}
	return n >= maxLoginFailures, nil
}
