// Package redact removes credentials and other secrets from spans before
// they leave the agent: tags that must never be stored are dropped, and
// the values of secret parameters (password=..., "token": "...",
// Authorization: ..., PASSWORD '...', AUTH ...) are masked in every text a
// span carries (operation, path, status text, tag values).
//
// The parsers already keep the arguments of Redis AUTH/HELLO, the MySQL
// handshake and PostgreSQL password messages out of exchanges, and the
// HTTP parsers keep no header but Host; redaction is the configurable
// second line behind them, for what a statement or a future parser may
// still carry.
package redact

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/deeptrace/deeptrace/schemas"
)

// Mask replaces a secret value.
const Mask = "[REDACTED]"

// DefaultDropTags are the tag keys never stored: request and response
// headers that carry credentials, under the names a parser would give them.
var DefaultDropTags = []string{
	"http.request.header.authorization", "http.request.header.cookie",
	"http.request.header.proxy-authorization", "http.response.header.set-cookie",
	"http.header.authorization", "http.header.cookie", "http.header.set-cookie",
	"http.header.proxy-authorization",
	"authorization", "cookie", "set-cookie", "proxy-authorization",
}

// DefaultSecretKeys are the parameter names whose values are masked.
var DefaultSecretKeys = []string{
	"password", "passwd", "pwd", "pass", "secret", "client_secret",
	"token", "access_token", "refresh_token", "id_token", "api_key", "apikey",
	"api-key", "x-api-key", "auth", "authorization", "proxy-authorization",
	"cookie", "set-cookie", "session", "sessionid", "sid", "credential", "credentials",
	"private_key", "requirepass", "masterauth",
}

// Config is what to redact. The zero value redacts nothing; Default is what
// the agent applies unless told otherwise.
type Config struct {
	// DropTags are tag keys removed from every span (case-insensitive; a
	// trailing '*' matches a prefix).
	DropTags []string
	// SecretKeys are parameter names whose values are masked.
	SecretKeys []string
	// Headers are header names (case-insensitive) whose values are never
	// kept: a tag named after the header (http.request.header.<name>,
	// http.response.header.<name>, http.header.<name>, <name>) is dropped
	// and "<name>: value" is masked to the end of its line in every text.
	Headers []string
	// Patterns are regular expressions (RE2) whose matches are masked in
	// every text a span carries.
	Patterns []string
}

// Default returns the configuration the agent applies by default.
func Default() Config {
	return Config{DropTags: append([]string(nil), DefaultDropTags...), SecretKeys: append([]string(nil), DefaultSecretKeys...)}
}

// Redactor applies a Config to spans. A nil *Redactor redacts nothing.
type Redactor struct {
	drop     map[string]bool
	prefixes []string
	// header masks a credential header's value to the end of its line.
	header *regexp.Regexp
	// pairs masks key=value, key: value and "key": "value", also where
	// the key ends a longer name (user.password, csrf_token, auth-token).
	pairs *regexp.Regexp
	// sql masks the literal after PASSWORD / IDENTIFIED BY.
	sql *regexp.Regexp
	// scheme masks the credentials after an HTTP auth scheme.
	scheme *regexp.Regexp
	// patterns are Config.Patterns.
	patterns []*regexp.Regexp
}

// New compiles cfg. It fails on a key or header that is empty and on a
// pattern that does not compile, naming it.
func New(cfg Config) (*Redactor, error) {
	r := &Redactor{drop: map[string]bool{}}
	headers := []string{"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}
	for _, h := range cfg.Headers {
		h = strings.ToLower(strings.TrimSpace(h))
		if h == "" || strings.ContainsAny(h, " :\r\n") {
			return nil, fmt.Errorf("redact: header %q: not a header name", h)
		}
		headers = append(headers, regexp.QuoteMeta(h))
		for _, tag := range []string{"http.request.header.", "http.response.header.", "http.header.", ""} {
			r.drop[tag+h] = true
		}
	}
	for i, p := range cfg.Patterns {
		re, err := regexp.Compile(p)
		if err != nil {
			return nil, fmt.Errorf("redact: pattern %d %q: %w", i, p, err)
		}
		r.patterns = append(r.patterns, re)
	}
	for _, k := range cfg.DropTags {
		k = strings.ToLower(strings.TrimSpace(k))
		switch {
		case k == "" || k == "*":
			return nil, fmt.Errorf("redact: drop tag %q: empty", k)
		case strings.HasSuffix(k, "*"):
			r.prefixes = append(r.prefixes, strings.TrimSuffix(k, "*"))
		default:
			r.drop[k] = true
		}
	}
	var keys []string
	for _, k := range cfg.SecretKeys {
		k = strings.TrimSpace(k)
		if k == "" {
			return nil, fmt.Errorf("redact: secret key %q: empty", k)
		}
		keys = append(keys, regexp.QuoteMeta(k))
	}
	if len(keys) > 0 {
		// The key, not inside a longer word (bypass is not pass); then '='
		// or ':'; then the value: quoted, or up to the next delimiter.
		r.pairs = regexp.MustCompile(`(?i)(^|[^a-z0-9_.-])("?(?:[a-z0-9]*[_.-])*(?:` + strings.Join(keys, "|") + `)"?)(\s*[=:]\s*)("[^"]*"?|'[^']*'?|[^\s&;,"'\r\n)}\][][^\s&;,"'\r\n)}\]]*)`)
	}
	r.header = regexp.MustCompile(`(?i)(^|[^a-z0-9_.-])(` + strings.Join(headers, "|") + `)(\s*:\s*)[^\r\n]*`)
	r.sql = regexp.MustCompile(`(?i)\b(PASSWORD|IDENTIFIED\s+(?:WITH\s+\S+\s+)?BY)(\s*=\s*|\s+)('[^']*'?|"[^"]*"?)`)
	r.scheme = regexp.MustCompile(`(?i)\b(Bearer|Basic|Digest|Token)\s+([A-Za-z0-9._~+/=-]{6,})`)
	return r, nil
}

// Span redacts s in place and recomputes its TagKV.
func (r *Redactor) Span(s *schemas.Span) {
	if r == nil {
		return
	}
	s.Operation = r.Text(s.Operation)
	s.Path = r.Text(s.Path)
	s.StatusText = r.Text(s.StatusText)
	if s.Protocol == schemas.ProtocolRedis {
		s.Operation = redisArgs(s.Operation)
	}
	changed := false
	for k, v := range s.Tags {
		if r.dropped(k) {
			delete(s.Tags, k)
			changed = true
			continue
		}
		nv := r.Text(v)
		if s.Protocol == schemas.ProtocolRedis {
			nv = redisArgs(nv)
		}
		if nv != v {
			s.Tags[k] = nv
			changed = true
		}
	}
	if changed || s.TagKV != nil {
		s.TagKV = schemas.TagKV(s.Tags)
	}
}

func (r *Redactor) dropped(k string) bool {
	k = strings.ToLower(k)
	if r.drop[k] {
		return true
	}
	for _, p := range r.prefixes {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// Text masks the secrets in one string.
func (r *Redactor) Text(s string) string {
	if r == nil || s == "" {
		return s
	}
	for _, re := range r.patterns {
		s = re.ReplaceAllLiteralString(s, Mask)
	}
	if !strings.ContainsAny(s, "=:'\" ") {
		return s
	}
	if strings.ContainsRune(s, ':') {
		s = r.header.ReplaceAllString(s, "${1}${2}${3}"+Mask)
	}
	if r.pairs != nil && strings.ContainsAny(s, "=:") {
		s = r.pairs.ReplaceAllString(s, "${1}${2}${3}"+Mask)
	}
	if strings.ContainsAny(s, "'\"") {
		s = r.sql.ReplaceAllString(s, "${1}${2}'"+Mask+"'")
	}
	if strings.ContainsRune(s, ' ') {
		s = r.scheme.ReplaceAllString(s, "${1} "+Mask)
	}
	return s
}

// redisSecretConfig lists the CONFIG parameters that hold credentials.
var redisSecretConfig = map[string]bool{"requirepass": true, "masterauth": true, "masteruser": true, "tls-key-file-pass": true, "tls-client-key-file-pass": true}

// redisCredentialed lists the Redis commands whose arguments carry
// credentials, with how many leading words to keep.
var redisCredentialed = map[string]int{"AUTH": 1, "HELLO": 2, "MIGRATE": 0, "ACL": 2}

// redisArgs masks the arguments of a Redis command text that may carry
// credentials: "AUTH user pass" keeps "AUTH", "CONFIG SET requirepass x"
// is handled by the secret keys.
func redisArgs(s string) string {
	f := strings.Fields(s)
	if len(f) < 2 {
		return s
	}
	if strings.EqualFold(f[0], "CONFIG") && len(f) >= 4 && strings.EqualFold(f[1], "SET") {
		for i := 2; i+1 < len(f); i += 2 {
			if redisSecretConfig[strings.ToLower(f[i])] {
				f[i+1] = Mask
			}
		}
		return strings.Join(f, " ")
	}
	keep, ok := redisCredentialed[strings.ToUpper(f[0])]
	if !ok {
		return s
	}
	if keep == 0 {
		// MIGRATE ... AUTH pw / AUTH2 user pw: mask after the keyword.
		for i, w := range f {
			if u := strings.ToUpper(w); u == "AUTH" || u == "AUTH2" {
				return strings.Join(f[:i+1], " ") + " " + Mask
			}
		}
		return s
	}
	if len(f) <= keep {
		return s
	}
	return strings.Join(f[:keep], " ") + " " + Mask
}
