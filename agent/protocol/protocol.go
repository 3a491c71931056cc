// Package protocol defines how the agent's per-connection byte streams become
// request/response exchanges. Parsers for each protocol live in the packages
// below it; they are stateful and incremental: a message may arrive in many
// chunks and a chunk may hold several messages.
package protocol

import (
	"github.com/deeptrace/deeptrace/schemas"
)

// Flow says which way a chunk travels on the connection, independent of
// which end observed it: requests flow from the client to the server.
type Flow uint8

// Flows.
const (
	ToServer Flow = iota + 1
	ToClient
)

// Chunk is the bytes of one system call on one connection, in the order of
// the calls on that socket for its flow.
type Chunk struct {
	Flow Flow
	// Data is the captured prefix of the call's bytes. Size is how many
	// bytes the call really moved; Size > len(Data) when capture truncated
	// it, and the parser must count the missing bytes without seeing them.
	Data []byte
	Size int64
	// StartNs and EndNs bound the system call (wall clock, ns).
	StartNs, EndNs int64
	// TCPSeq is the TCP sequence position of Data[0].
	TCPSeq uint32
	TID    uint32
	GoID   uint64
}

// Exchange is one request and its response on one connection.
type Exchange struct {
	Protocol schemas.Protocol
	// Seq numbers the exchanges of a connection from 0, in request order.
	Seq uint64

	// ReqStartNs is the start of the first call that carried the request;
	// ReqEndNs the end of the last. Likewise for the response. An exchange
	// whose response never came has RespStartNs == 0 and NoResponse set.
	ReqStartNs, ReqEndNs   int64
	RespStartNs, RespEndNs int64
	NoResponse             bool
	ReqBytes, RespBytes    int64
	// ReqTCPSeq and RespTCPSeq are the TCP positions of the first request
	// and response byte.
	ReqTCPSeq, RespTCPSeq uint32
	// ReqTID/ReqGoID ran the call that carried the request's first bytes;
	// RespTID/RespGoID the call that carried the response's first bytes.
	ReqTID, RespTID   uint32
	ReqGoID, RespGoID uint64

	// Operation, Method and Path as in schemas.Span.
	Operation  string
	Method     string
	Path       string
	StatusCode int
	Error      bool
	StatusText string
	Tags       map[string]string
	// Values are identifiers the request carries (path segments, query
	// values, keys, SQL literals) and the response returns, for
	// correlation by shared content. Bounded in count and length.
	Values []string
}

// Parser turns one connection's chunks into exchanges.
type Parser interface {
	// Feed consumes one chunk and returns the exchanges it completed. An
	// error means the stream cannot be parsed as this protocol any more;
	// the caller falls back to turn-taking.
	Feed(c Chunk) ([]Exchange, error)
	// Flush returns what is pending when the connection closes: requests
	// without response (NoResponse) and partial messages.
	Flush() []Exchange
	// Protocol names what the parser parses.
	Protocol() schemas.Protocol
}

// Limits shared by every parser, so a hostile stream cannot make one grow
// without bound.
const (
	// MaxPending is the most requests a parser holds while waiting for
	// their responses (pipelining, HTTP/2 streams).
	MaxPending = 1024
	// MaxBuffer is the most bytes of an incomplete message a parser keeps.
	MaxBuffer = 64 << 10
	// MaxValues and MaxValueLen bound Exchange.Values.
	MaxValues   = 16
	MaxValueLen = 128
)
