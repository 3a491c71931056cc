// Package schemas is the one contract every DeepTrace component shares: the
// span and trace documents, the names of the time-sharded indices and their
// mappings. Nothing outside this package spells an index or field name.
package schemas

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Role says which end of a connection a span was seen at.
type Role string

// The two roles of a span.
const (
	RoleClient Role = "client"
	RoleServer Role = "server"
)

// Protocol names the application protocol a span was parsed from.
type Protocol string

// Protocols DeepTrace parses. ProtocolUnknown spans come from request/response
// turn-taking on a connection whose protocol was not recognised.
const (
	ProtocolHTTP1    Protocol = "http1"
	ProtocolHTTP2    Protocol = "http2"
	ProtocolGRPC     Protocol = "grpc"
	ProtocolRedis    Protocol = "redis"
	ProtocolMySQL    Protocol = "mysql"
	ProtocolPostgres Protocol = "postgres"
	ProtocolUnknown  Protocol = "unknown"
)

// Conn is a TCP connection seen from one of its ends, normalised so that both
// ends describe it the same way: Client is the side that connected, Server the
// side that accepted. Without address translation the caller's and the
// callee's Conn are equal.
type Conn struct {
	ClientIP   string `json:"client_ip"`
	ClientPort uint16 `json:"client_port"`
	ServerIP   string `json:"server_ip"`
	ServerPort uint16 `json:"server_port"`
}

// String formats the connection as client->server.
func (c Conn) String() string {
	return fmt.Sprintf("%s:%d->%s:%d", c.ClientIP, c.ClientPort, c.ServerIP, c.ServerPort)
}

// Span is one request/response exchange seen at one endpoint of one
// connection. It is the document stored in the hourly span indices.
type Span struct {
	SpanID string `json:"span_id"`
	// ParentSpanID is the parent local correlation chose: for a client span,
	// the server span of the same process whose request it serves. Empty when
	// none was found. ParentConfidence is in [0,1].
	ParentSpanID     string  `json:"parent_span_id,omitempty"`
	ParentConfidence float64 `json:"parent_confidence,omitempty"`

	Role     Role     `json:"role"`
	Protocol Protocol `json:"protocol"`
	// Operation is what the exchange did: "GET /users/42", "/pkg.Svc/Method",
	// "GET" (Redis), "SELECT users".
	Operation  string `json:"operation"`
	Method     string `json:"method,omitempty"`
	Path       string `json:"path,omitempty"`
	StatusCode int    `json:"status_code"`
	Error      bool   `json:"error"`
	StatusText string `json:"status_text,omitempty"`

	// Timestamp is StartNs as a date, for range queries and sharding.
	Timestamp  time.Time `json:"timestamp"`
	StartNs    int64     `json:"start_ns"`
	EndNs      int64     `json:"end_ns"`
	DurationNs int64     `json:"duration_ns"`
	ReqBytes   int64     `json:"req_bytes"`
	RespBytes  int64     `json:"resp_bytes"`

	PID     uint32 `json:"pid"`
	TID     uint32 `json:"tid"`
	GoID    uint64 `json:"goid,omitempty"`
	Process string `json:"process"`
	Service string `json:"service"`
	Host    string `json:"host"`
	NetNS   uint32 `json:"netns,omitempty"`

	Conn
	// Seq is the exchange's sequence number on its connection (0-based).
	Seq uint64 `json:"seq"`
	// ReqTCPSeq and RespTCPSeq are the TCP sequence positions of the first
	// byte of the request and of the response. Both ends of a connection see
	// the same positions for the same bytes, even through a NAT.
	ReqTCPSeq  uint32 `json:"req_tcp_seq"`
	RespTCPSeq uint32 `json:"resp_tcp_seq"`

	// Tags holds protocol attributes (http.status_code, db.statement, ...).
	Tags map[string]string `json:"tags,omitempty"`
	// TagKV is Tags flattened to "key=value" strings for exact-match search.
	TagKV []string `json:"tag_kv,omitempty"`

	// SampleRate is the share of its service's requests the agent kept
	// when it sampled (the central configuration's "sampling"): each kept
	// span stands for 1/SampleRate. 0 means everything was kept.
	SampleRate float64 `json:"sample_rate,omitempty"`

	// IngestedAt is when the agent handed the span to the store; assembly
	// uses it to find spans that arrived after their window was assembled.
	IngestedAt time.Time `json:"ingested_at"`
}

// Weight is how many requests the span stands for: 1/SampleRate, 1 when
// it was not sampled.
func (s *Span) Weight() float64 {
	if s.SampleRate <= 0 || s.SampleRate >= 1 {
		return 1
	}
	return 1 / s.SampleRate
}

// Finish fills the derived fields (Timestamp, DurationNs, TagKV) from the
// primary ones. Call it before writing a span.
func (s *Span) Finish() {
	s.Timestamp = time.Unix(0, s.StartNs).UTC()
	s.DurationNs = s.EndNs - s.StartNs
	s.TagKV = TagKV(s.Tags)
}

// Start returns the span's start as a time.
func (s *Span) Start() time.Time { return time.Unix(0, s.StartNs).UTC() }

// TagKV flattens tags to sorted "key=value" strings.
func TagKV(tags map[string]string) []string {
	if len(tags) == 0 {
		return nil
	}
	kv := make([]string, 0, len(tags))
	for k, v := range tags {
		kv = append(kv, k+"="+v)
	}
	sort.Strings(kv)
	return kv
}

// SpanID derives the stable id of the span seen on host at one end (role) of
// conn, for the exchange with sequence number seq and request TCP position
// reqTCPSeq. The same input always gives the same id, so rewriting a span is
// idempotent.
func SpanID(host string, conn Conn, seq uint64, reqTCPSeq uint32, role Role) string {
	h := sha256.New()
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], seq)
	binary.BigEndian.PutUint32(b[8:], reqTCPSeq)
	h.Write([]byte(host))
	h.Write([]byte{0})
	h.Write([]byte(conn.String()))
	h.Write([]byte{0})
	h.Write(b[:])
	h.Write([]byte(role))
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// TraceID derives a trace's id from the id of its root span: reassembling
// the same trace overwrites its document instead of duplicating it.
func TraceID(rootSpanID string) string {
	sum := sha256.Sum256([]byte("trace:" + rootSpanID))
	return hex.EncodeToString(sum[:16])
}

// ValidID reports whether id looks like a span (16 hex) or trace (32 hex) id.
func ValidID(id string, hexLen int) bool {
	if len(id) != hexLen {
		return false
	}
	_, err := strconv.ParseUint(id[:16], 16, 64)
	if err != nil {
		return false
	}
	if hexLen > 16 {
		_, err = strconv.ParseUint(id[16:], 16, 64)
	}
	return err == nil && strings.ToLower(id) == id
}
