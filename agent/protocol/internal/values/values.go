// Package values collects the identifiers an exchange carries (ids in
// paths, query values, keys, SQL literals) for correlation by shared
// content, within the bounds protocol.MaxValues and protocol.MaxValueLen.
package values

import (
	"strings"

	"github.com/deeptrace/deeptrace/agent/protocol"
)

func maxValues() int { return protocol.MaxValues }

// Add appends v to vs unless vs is full, v is empty or already there; v is
// cut to protocol.MaxValueLen bytes.
func Add(vs []string, v string) []string {
	if v == "" || len(vs) >= protocol.MaxValues {
		return vs
	}
	if len(v) > protocol.MaxValueLen {
		v = v[:protocol.MaxValueLen]
	}
	for _, x := range vs {
		if x == v {
			return vs
		}
	}
	return append(vs, v)
}

// LooksLikeID reports whether a path segment or value looks like an
// identifier rather than a word: it holds a digit and only id characters
// (letters, digits, '-', '_', '.', ':'), or it is a long hex string.
func LooksLikeID(s string) bool {
	if len(s) == 0 || len(s) > 256 {
		return false
	}
	digits, hex := 0, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			digits++
			hex++
		case c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
			hex++
		case c >= 'g' && c <= 'z', c >= 'G' && c <= 'Z', c == '-', c == '_', c == '.', c == ':', c == '@':
		default:
			return false
		}
	}
	if digits > 0 {
		// "v1", "h2" and the like are versions, not ids.
		return len(s) > 2 || digits == len(s)
	}
	return hex == len(s) && len(s) >= 16
}

// FromPath adds the segments of an URL path that look like ids.
func FromPath(vs []string, path string) []string {
	for len(path) > 0 {
		i := strings.IndexByte(path, '/')
		var seg string
		if i < 0 {
			seg, path = path, ""
		} else {
			seg, path = path[:i], path[i+1:]
		}
		if LooksLikeID(seg) {
			vs = Add(vs, seg)
		}
	}
	return vs
}

// FromQuery adds the values of an URL query string ("a=1&b=x") that are
// not empty, raw (not unescaped, so both ends compare equal bytes).
func FromQuery(vs []string, query string) []string {
	for len(query) > 0 && len(vs) < protocol.MaxValues {
		var kv string
		if i := strings.IndexByte(query, '&'); i >= 0 {
			kv, query = query[:i], query[i+1:]
		} else {
			kv, query = query, ""
		}
		if i := strings.IndexByte(kv, '='); i >= 0 {
			vs = Add(vs, kv[i+1:])
		}
	}
	return vs
}

// FromCell adds a result value (a row's column, a reply) that looks like an
// id and is not a one-character flag or count.
func FromCell(vs []string, s string) []string {
	if len(s) >= 2 && LooksLikeID(s) {
		return Add(vs, s)
	}
	return vs
}
