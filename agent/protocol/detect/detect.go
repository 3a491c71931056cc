// Package detect recognises a connection's protocol from its first bytes,
// with no port configuration, and makes the parser for it. Auto puts the
// two together and falls back to turn-taking when a parser gives up.
package detect

import (
	"bytes"
	"encoding/binary"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/http1"
	"github.com/deeptrace/deeptrace/agent/protocol/http2"
	"github.com/deeptrace/deeptrace/agent/protocol/mysql"
	"github.com/deeptrace/deeptrace/agent/protocol/postgres"
	"github.com/deeptrace/deeptrace/agent/protocol/redis"
	"github.com/deeptrace/deeptrace/agent/protocol/turn"
	"github.com/deeptrace/deeptrace/schemas"
)

// New returns a parser for p: gRPC shares the HTTP/2 parser, and anything
// unknown gets turn-taking.
func New(p schemas.Protocol) protocol.Parser {
	switch p {
	case schemas.ProtocolHTTP1:
		return http1.New()
	case schemas.ProtocolHTTP2, schemas.ProtocolGRPC:
		return http2.New()
	case schemas.ProtocolRedis:
		return redis.New()
	case schemas.ProtocolMySQL:
		return mysql.New()
	case schemas.ProtocolPostgres:
		return postgres.New()
	}
	return turn.New()
}

var httpMethods = []string{"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
	"PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "PURGE", "SEARCH"}

// Detect names the protocol of a connection from the first bytes seen on
// it and the way they flow: a client's first request, or a server's
// first words (a MySQL greeting, an HTTP/2 SETTINGS frame) when the
// server speaks first or capture began mid-connection. It returns
// schemas.ProtocolUnknown when nothing matches; gRPC is found later,
// per stream, by the HTTP/2 parser.
func Detect(first []byte, flow protocol.Flow) schemas.Protocol {
	if flow == protocol.ToServer {
		return detectRequest(first)
	}
	return detectResponse(first)
}

func detectRequest(b []byte) schemas.Protocol {
	switch {
	case len(b) >= 3 && bytes.HasPrefix([]byte(http2.Preface), b[:min(len(b), len(http2.Preface))]):
		return schemas.ProtocolHTTP2
	case isHTTPRequest(b):
		return schemas.ProtocolHTTP1
	case isRESPCommand(b):
		return schemas.ProtocolRedis
	case isPostgresStartup(b) || isPostgresTyped(b):
		return schemas.ProtocolPostgres
	case isMySQLClient(b):
		return schemas.ProtocolMySQL
	}
	return schemas.ProtocolUnknown
}

func detectResponse(b []byte) schemas.Protocol {
	switch {
	case bytes.HasPrefix(b, []byte("HTTP/1.")):
		return schemas.ProtocolHTTP1
	case len(b) >= 9 && b[0] == 0 && b[3] == 0x4 && b[4]&^1 == 0 && binary.BigEndian.Uint32(b[5:]) == 0 &&
		(int(b[1])<<8|int(b[2]))%6 == 0:
		return schemas.ProtocolHTTP2 // the server's SETTINGS
	case isMySQLGreeting(b):
		return schemas.ProtocolMySQL
	case len(b) >= 9 && b[0] == 'R' && binary.BigEndian.Uint32(b[1:]) >= 8 && binary.BigEndian.Uint32(b[1:]) < 1024 &&
		binary.BigEndian.Uint32(b[5:]) <= 12:
		return schemas.ProtocolPostgres // an authentication request
	case isRESPReply(b):
		return schemas.ProtocolRedis
	}
	return schemas.ProtocolUnknown
}

func isHTTPRequest(b []byte) bool {
	sp := bytes.IndexByte(b, ' ')
	if sp <= 0 || sp+1 >= len(b) {
		return false
	}
	m := string(b[:sp])
	for _, x := range httpMethods {
		if m == x {
			c := b[sp+1]
			return c == '/' || c == '*' || c == 'h' || (m == "CONNECT" && c >= '0')
		}
	}
	return false
}

var redisInline = []string{"PING", "AUTH ", "HELLO", "QUIT", "INFO", "SELECT "}

func isRESPCommand(b []byte) bool {
	if len(b) >= 4 && b[0] == '*' && b[1] >= '1' && b[1] <= '9' {
		i := 1
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i+2 < len(b) && b[i] == '\r' && b[i+1] == '\n' && b[i+2] == '$'
	}
	for _, c := range redisInline {
		if len(b) > len(c) && bytes.EqualFold(b[:len(c)], []byte(c)) && bytes.HasSuffix(b, []byte("\r\n")) {
			return true
		}
	}
	return false
}

func isRESPReply(b []byte) bool {
	if len(b) < 3 {
		return false
	}
	i := bytes.Index(b, []byte("\r\n"))
	if i < 1 {
		return false
	}
	line := b[1:i]
	switch b[0] {
	case '+', '-':
		for _, c := range line {
			if c < 0x20 || c > 0x7e {
				return false
			}
		}
		return b[0] == '+' || bytes.HasPrefix(line, []byte("ERR")) || bytes.HasPrefix(line, []byte("NOAUTH")) ||
			bytes.HasPrefix(line, []byte("WRONGTYPE")) || bytes.HasPrefix(line, []byte("WRONGPASS"))
	case ':', '$', '*', '%', '~', '>':
		if len(line) == 0 {
			return false
		}
		for j, c := range line {
			if !(c >= '0' && c <= '9' || (j == 0 && c == '-')) {
				return false
			}
		}
		return true
	}
	return false
}

func isPostgresStartup(b []byte) bool {
	if len(b) < 8 || b[0] != 0 {
		return false
	}
	l := binary.BigEndian.Uint32(b)
	switch binary.BigEndian.Uint32(b[4:]) {
	case 196608:
		return l >= 8 && l < 10000
	case 80877103, 80877104, 80877102: // SSL, GSS, cancel requests
		return l == 8 || l == 16
	}
	return false
}

// isPostgresTyped recognises a simple Query or a Parse that fills the
// chunk exactly, for connections captured mid-way.
func isPostgresTyped(b []byte) bool {
	if len(b) < 6 || (b[0] != 'Q' && b[0] != 'P') {
		return false
	}
	l := binary.BigEndian.Uint32(b[1:])
	if int(l)+1 > len(b) || l < 5 {
		return false
	}
	if b[0] == 'Q' {
		return int(l)+1 == len(b) && b[len(b)-1] == 0
	}
	return b[l] == 0 || bytes.IndexByte(b[5:l+1], 0) >= 0
}

func isMySQLGreeting(b []byte) bool {
	if len(b) < 10 || b[3] != 0 || b[4] != 0x0a {
		return false
	}
	l := int(b[0]) | int(b[1])<<8 | int(b[2])<<16
	if l < 20 || l > 1024 {
		return false
	}
	// A printable version string, NUL-terminated.
	end := bytes.IndexByte(b[5:], 0)
	if end < 1 {
		return false
	}
	for _, c := range b[5 : 5+end] {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// isMySQLClient recognises a handshake response, or a COM_QUERY /
// COM_STMT_PREPARE packet that fills the chunk exactly, for connections
// captured mid-way.
func isMySQLClient(b []byte) bool {
	if len(b) < 5 {
		return false
	}
	l := int(b[0]) | int(b[1])<<8 | int(b[2])<<16
	switch {
	case b[3] == 1 && l >= 32 && len(b) >= 8:
		caps := binary.LittleEndian.Uint32(b[4:])
		return caps&0x200 != 0 && l+4 == len(b)
	case b[3] == 0 && l+4 == len(b) && (b[4] == 0x03 || b[4] == 0x16):
		for _, c := range b[5:min(len(b), 64)] {
			if c < 0x09 || c == 0x7f {
				return false
			}
		}
		return true
	case b[3] == 0 && l == 1 && len(b) == 5 && b[4] == 0x0e: // COM_PING
		return true
	}
	return false
}

// Registry offers Detect and New as methods, for callers that take them
// as an interface (conntrack.Protocols).
type Registry struct{}

// Detect is the package's Detect.
func (Registry) Detect(first []byte, flow protocol.Flow) schemas.Protocol { return Detect(first, flow) }

// New is the package's New.
func (Registry) New(p schemas.Protocol) protocol.Parser { return New(p) }
