// Package event defines what capture hands to the rest of the agent: one
// decoded kernel event per socket system call, in user-space form. Capture
// (eBPF, or a recorded file) produces them; conntrack consumes them.
package event

import (
	"net/netip"
)

// Kind is what a system call did to a connection.
type Kind uint8

// Event kinds.
const (
	KindData    Kind = iota + 1 // bytes read or written
	KindConnect                 // connect() on a TCP socket completed or started
	KindAccept                  // accept()/accept4() returned a TCP socket
	KindClose                   // close() of a TCP socket
)

func (k Kind) String() string {
	switch k {
	case KindData:
		return "data"
	case KindConnect:
		return "connect"
	case KindAccept:
		return "accept"
	case KindClose:
		return "close"
	}
	return "kind?"
}

// Direction of a data event, from the point of view of the traced process.
type Direction uint8

// Directions.
const (
	Egress  Direction = iota + 1 // the process wrote/sent
	Ingress                      // the process read/received
)

func (d Direction) String() string {
	switch d {
	case Egress:
		return "egress"
	case Ingress:
		return "ingress"
	}
	return "dir?"
}

// Role of the local end of a connection.
type Role uint8

// Roles. RoleUnknown when the connection predates the agent and the local
// port does not tell.
const (
	RoleUnknown Role = iota
	RoleClient
	RoleServer
)

func (r Role) String() string {
	switch r {
	case RoleClient:
		return "client"
	case RoleServer:
		return "server"
	}
	return "unknown"
}

// Event is one socket system call of a traced process.
type Event struct {
	Kind Kind
	Dir  Direction
	// EnterNs and ExitNs are CLOCK_MONOTONIC (bpf_ktime_get_ns) at syscall
	// entry and exit.
	EnterNs, ExitNs uint64
	PID, TID        uint32
	Comm            string
	FD              int32
	// SockID identifies the kernel socket (its address, or a cookie);
	// stable while the socket lives, unlike fds that are reused.
	SockID uint64
	NetNS  uint32
	Cgroup uint64
	// Local and Remote are this end's and the peer's address.
	Local, Remote netip.AddrPort
	Role          Role
	// Size is the byte count the call returned (<=0 for errors and EOF).
	Size int64
	// Offset is the position of Payload within the call's bytes: a call
	// larger than the capture limit is split into several events, in order.
	Offset int64
	// TCPSeq is the TCP sequence position of the call's first byte: the send
	// sequence for writes, the receive sequence for reads.
	TCPSeq uint32
	// Payload holds the first captured bytes at Offset (at most the capture
	// limit); len(Payload) may be less than Size.
	Payload []byte
	// GoID is the goroutine running the call, when the process is a Go
	// binary and the runtime probes are attached; 0 otherwise.
	GoID uint64
	// ParentGoID is the goroutine that created GoID (Go >= 1.21); 0 when
	// unknown.
	ParentGoID uint64
}

// DataAt is when the event's bytes existed: a write's when it was made, a
// read's when it returned. A blocking read may wait long before its data
// comes (a keep-alive connection between requests, a client waiting for
// its answer); that wait belongs neither to the request nor to the
// response. Spans start here.
func (e *Event) DataAt() uint64 {
	if e.Dir == Ingress {
		return e.ExitNs
	}
	return e.EnterNs
}

// ConnKey identifies one connection of one process for as long as it lives.
type ConnKey struct {
	PID    uint32
	SockID uint64
}

// Key returns the connection key of the event.
func (e *Event) Key() ConnKey { return ConnKey{PID: e.PID, SockID: e.SockID} }

// GoEvent records a goroutine scheduling fact from the Go runtime probes.
type GoEvent struct {
	Kind GoEventKind
	Ns   uint64
	PID  uint32
	TID  uint32
	// GoID is the goroutine concerned; ParentGoID the creator for
	// GoCreate.
	GoID, ParentGoID uint64
}

// GoEventKind distinguishes goroutine creation from a goroutine starting
// to run on an OS thread.
type GoEventKind uint8

// Goroutine event kinds.
const (
	GoCreate  GoEventKind = iota + 1 // ParentGoID created GoID
	GoRunning                        // GoID started running on TID
)
