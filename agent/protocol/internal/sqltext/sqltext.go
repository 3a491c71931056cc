// Package sqltext reads just enough of an SQL statement for a span: its verb,
// the first table it names, and its literals. It is a tolerant scanner, not
// a parser: anything it does not understand yields an empty answer.
package sqltext

import (
	"strings"

	"github.com/deeptrace/deeptrace/agent/protocol/internal/values"
)

// MaxStatement is the most bytes of a statement a span keeps in
// db.statement.
const MaxStatement = 1024

// Truncate cuts a statement to MaxStatement bytes, on a UTF-8 boundary.
func Truncate(q string) string {
	if len(q) <= MaxStatement {
		return q
	}
	i := MaxStatement
	for i > 0 && q[i]&0xC0 == 0x80 {
		i--
	}
	return q[:i]
}

type tokKind uint8

const (
	tokWord tokKind = iota + 1
	tokIdent
	tokString
	tokNumber
	tokPunct
	tokParam
)

type token struct {
	kind tokKind
	text string
}

// scanner yields the tokens of a statement, skipping space and comments.
type scanner struct {
	s string
	i int
}

func (sc *scanner) next() (token, bool) {
	s := sc.s
	for sc.i < len(s) {
		c := s[sc.i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			sc.i++
		case c == '-' && sc.i+1 < len(s) && s[sc.i+1] == '-', c == '#':
			for sc.i < len(s) && s[sc.i] != '\n' {
				sc.i++
			}
		case c == '/' && sc.i+1 < len(s) && s[sc.i+1] == '*':
			end := strings.Index(s[sc.i+2:], "*/")
			if end < 0 {
				sc.i = len(s)
			} else {
				sc.i += end + 4
			}
		default:
			return sc.token(), true
		}
	}
	return token{}, false
}

func (sc *scanner) token() token {
	s := sc.s
	start := sc.i
	c := s[sc.i]
	switch {
	case c == '\'':
		var b strings.Builder
		sc.i++
		for sc.i < len(s) {
			c := s[sc.i]
			if c == '\\' && sc.i+1 < len(s) {
				b.WriteByte(s[sc.i+1])
				sc.i += 2
				continue
			}
			if c == '\'' {
				if sc.i+1 < len(s) && s[sc.i+1] == '\'' {
					b.WriteByte('\'')
					sc.i += 2
					continue
				}
				sc.i++
				break
			}
			b.WriteByte(c)
			sc.i++
		}
		return token{tokString, b.String()}
	case c == '"' || c == '`':
		end := strings.IndexByte(s[sc.i+1:], c)
		if end < 0 {
			sc.i = len(s)
			return token{tokIdent, s[start+1:]}
		}
		sc.i += end + 2
		return token{tokIdent, s[start+1 : sc.i-1]}
	case c >= '0' && c <= '9':
		for sc.i < len(s) && (isWord(s[sc.i]) || s[sc.i] == '.') {
			sc.i++
		}
		return token{tokNumber, s[start:sc.i]}
	case c == '$' || c == '?' || c == ':':
		sc.i++
		for sc.i < len(s) && s[sc.i] >= '0' && s[sc.i] <= '9' {
			sc.i++
		}
		return token{tokParam, s[start:sc.i]}
	case isWord(c) || c >= 0x80:
		for sc.i < len(s) && (isWord(s[sc.i]) || s[sc.i] >= 0x80) {
			sc.i++
		}
		return token{tokWord, s[start:sc.i]}
	}
	sc.i++
	return token{tokPunct, s[start:sc.i]}
}

func isWord(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// Summary is what a span keeps of a statement.
type Summary struct {
	// Verb is the statement's first keyword, upper-cased: SELECT, INSERT,
	// BEGIN...
	Verb string
	// Table is the first table the statement reads or writes, when the
	// verb says where to find it; schema-qualified names keep the schema.
	Table string
}

// Operation is "VERB table", or just the verb.
func (s Summary) Operation() string {
	if s.Table == "" {
		return s.Verb
	}
	return s.Verb + " " + s.Table
}

// Summarize finds the verb and first table of q.
func Summarize(q string) Summary {
	sc := scanner{s: q}
	var sum Summary
	t, ok := sc.next()
	for ok && t.kind == tokPunct && t.text == "(" {
		t, ok = sc.next()
	}
	if !ok || t.kind != tokWord {
		return sum
	}
	sum.Verb = strings.ToUpper(t.text)
	var after []string // keywords after which the table name follows
	switch sum.Verb {
	case "SELECT", "DELETE":
		after = []string{"FROM"}
	case "INSERT", "REPLACE":
		after = []string{"INTO"}
	case "UPDATE":
		sum.Table = tableName(&sc)
		return sum
	case "CREATE", "DROP", "ALTER", "TRUNCATE", "LOCK":
		after = []string{"TABLE", "TABLES", "INDEX", "VIEW", "SEQUENCE", "DATABASE", "SCHEMA"}
		if sum.Verb == "TRUNCATE" {
			sum.Table = tableName(&sc)
			if strings.EqualFold(sum.Table, "TABLE") {
				sum.Table = tableName(&sc)
			}
			return sum
		}
	case "WITH":
		// WITH x AS (...) SELECT ... FROM t: the main verb comes after the
		// common table expressions; find the first FROM/INTO/UPDATE.
		after = []string{"FROM", "INTO", "UPDATE"}
	case "COPY":
		sum.Table = tableName(&sc)
		return sum
	default:
		return sum
	}
	depth := 0
	for n := 0; n < 256; n++ {
		t, ok = sc.next()
		if !ok {
			return sum
		}
		switch {
		case t.kind == tokPunct && t.text == "(":
			depth++
		case t.kind == tokPunct && t.text == ")":
			depth--
		case t.kind == tokWord && (depth == 0 || sum.Verb == "WITH"):
			for _, kw := range after {
				if strings.EqualFold(t.text, kw) {
					sum.Table = tableName(&sc)
					if sum.Table != "" {
						return sum
					}
				}
			}
		}
	}
	return sum
}

// tableName reads a possibly qualified name, skipping IF [NOT] EXISTS and
// ONLY.
func tableName(sc *scanner) string {
	var name string
	for {
		t, ok := sc.next()
		if !ok {
			return name
		}
		if t.kind == tokWord && name == "" {
			switch strings.ToUpper(t.text) {
			case "IF", "NOT", "EXISTS", "ONLY", "LOW_PRIORITY", "IGNORE", "DELAYED", "QUICK", "UNIQUE", "TEMPORARY", "TEMP":
				continue
			}
		}
		if t.kind != tokWord && t.kind != tokIdent {
			return name
		}
		name += t.text
		save := sc.i
		p, ok := sc.next()
		if !ok || p.kind != tokPunct || p.text != "." {
			sc.i = save
			return name
		}
		name += "."
	}
}

// Literals adds the string and number literals of q to vs, for correlation.
func Literals(vs []string, q string) []string {
	sc := scanner{s: q}
	for n := 0; n < 4096; n++ {
		t, ok := sc.next()
		if !ok {
			break
		}
		if t.kind == tokString || t.kind == tokNumber {
			vs = values.Add(vs, t.text)
		}
	}
	return vs
}
