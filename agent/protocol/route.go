package protocol

import "strings"

// RouteTemplate turns a URL path into the route it most likely stands for,
// replacing segments that are identifiers (numbers, UUIDs, long hex or
// mixed digit strings) with "{id}", so that "/users/42/orders/7f3a9c2e1b"
// and "/users/43/orders/00aa11bb22" share the operation
// "/users/{id}/orders/{id}". The query string is dropped. Services list a
// handful of operations instead of one per id.
func RouteTemplate(path string) string {
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	if !strings.Contains(path, "/") {
		return path
	}
	var b strings.Builder
	b.Grow(len(path))
	for i, seg := range strings.Split(path, "/") {
		if i > 0 {
			b.WriteByte('/')
		}
		if isIdentifier(seg) {
			b.WriteString("{id}")
		} else {
			b.WriteString(seg)
		}
	}
	return b.String()
}

// isIdentifier reports whether a path segment looks like an id rather than
// a fixed route word.
func isIdentifier(seg string) bool {
	if seg == "" {
		return false
	}
	digits, hex, other := 0, 0, 0
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
			hex++
		case c == '-' || c == '_':
		default:
			other++
		}
	}
	switch {
	case digits == len(seg):
		return true // 42
	case other == 0 && digits > 0 && len(seg) >= 8:
		return true // 7f3a9c2e1b, UUIDs
	case digits >= 3 && digits*2 >= len(seg):
		return true // ord-12345, v2-000123
	}
	return false
}
