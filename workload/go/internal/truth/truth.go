// Package truth writes the workload's out-of-band ground truth: one JSON
// object per line in $DEEPTRACE_WORKLOAD_TRUTH/<service>.jsonl. The format is
// a contract with the accuracy evaluator; it is described field by field in
// docs/workload.md.
//
// Records are marshalled by the calling goroutine, appended to an in-memory
// buffer under a short lock, and written to the file by a background
// goroutine every FlushInterval (and by Close). The request path never waits
// for the disk.
package truth

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// FlushInterval is how often buffered records reach the file.
const FlushInterval = 200 * time.Millisecond

// In is one incoming request handled by a service.
type In struct {
	Kind    string `json:"kind"` // "in"
	Service string `json:"service"`
	ReqID   string `json:"req_id"`
	Proto   string `json:"proto"` // "http" or "grpc"
	Method  string `json:"method"`
	Path    string `json:"path,omitempty"` // HTTP: path with query string
	RPC     string `json:"rpc,omitempty"`  // gRPC: full method name
	Key     string `json:"key,omitempty"`  // gRPC: canonical text of the request message
	Peer    string `json:"peer"`
	Local   string `json:"local"`
	StartNs int64  `json:"start_ns"`
	EndNs   int64  `json:"end_ns"`
	Pid     int    `json:"pid"`
	Tid     int    `json:"tid"`
	Status  int    `json:"status"`
	OK      bool   `json:"ok"`
}

// Out is one outgoing call made while serving an incoming request.
type Out struct {
	Kind        string `json:"kind"` // "out"
	Service     string `json:"service"`
	CallID      string `json:"call_id"`
	ParentReqID string `json:"parent_req_id"`
	Target      string `json:"target"`
	Proto       string `json:"proto"` // http, grpc, redis, postgres
	Op          string `json:"op"`
	Key         string `json:"key,omitempty"`
	Local       string `json:"local"`
	Peer        string `json:"peer"`
	StartNs     int64  `json:"start_ns"`
	EndNs       int64  `json:"end_ns"`
	Pid         int    `json:"pid"`
	Tid         int    `json:"tid"`
	Status      int    `json:"status"`
	OK          bool   `json:"ok"`
	Error       string `json:"error,omitempty"`
}

// Log is one service's truth log. The zero value and nil are no-op logs.
type Log struct {
	service string
	pid     int
	prefix  string
	reqSeq  atomic.Uint64
	callSeq atomic.Uint64

	mu  sync.Mutex
	buf []byte

	wmu  sync.Mutex
	f    *os.File
	stop chan struct{}
	done chan struct{}
}

// Open opens <dir>/<service>.jsonl in append mode, where dir is
// $DEEPTRACE_WORKLOAD_TRUTH. With the variable unset it returns a log that
// only hands out ids.
func Open(service string) (*Log, error) {
	return OpenDir(os.Getenv("DEEPTRACE_WORKLOAD_TRUTH"), service)
}

// OpenDir is Open with an explicit directory ("" disables writing).
func OpenDir(dir, service string) (*Log, error) {
	l := &Log{service: service, pid: os.Getpid()}
	l.prefix = fmt.Sprintf("%d-", l.pid)
	if dir == "" {
		return l, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, service+".jsonl"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	l.f = f
	l.stop = make(chan struct{})
	l.done = make(chan struct{})
	go l.loop()
	return l, nil
}

// Service returns the service name the log was opened for.
func (l *Log) Service() string { return l.service }

// Pid is the process id recorded in every line.
func (l *Log) Pid() int { return l.pid }

// NextReqID returns a fresh service-local request id ("<pid>-<n>"). It is
// never sent on the wire.
func (l *Log) NextReqID() string {
	return l.prefix + fmt.Sprint(l.reqSeq.Add(1))
}

func (l *Log) nextCallID() string {
	return l.prefix + "c" + fmt.Sprint(l.callSeq.Add(1))
}

// WriteIn records an incoming request.
func (l *Log) WriteIn(r In) {
	if l == nil {
		return
	}
	r.Kind = "in"
	r.Service = l.service
	r.Pid = l.pid
	l.append(r)
}

// WriteOut records an outgoing call. CallID is filled in when empty.
func (l *Log) WriteOut(r Out) {
	if l == nil {
		return
	}
	r.Kind = "out"
	r.Service = l.service
	r.Pid = l.pid
	if r.CallID == "" {
		r.CallID = l.nextCallID()
	}
	l.append(r)
}

func (l *Log) append(v any) {
	if l.f == nil {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	l.mu.Lock()
	l.buf = append(l.buf, b...)
	l.buf = append(l.buf, '\n')
	l.mu.Unlock()
}

func (l *Log) loop() {
	defer close(l.done)
	t := time.NewTicker(FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			l.Flush()
		case <-l.stop:
			l.Flush()
			return
		}
	}
}

// Flush writes buffered records to the file.
func (l *Log) Flush() {
	if l == nil || l.f == nil {
		return
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.mu.Lock()
	b := l.buf
	l.buf = make([]byte, 0, cap(b))
	l.mu.Unlock()
	if len(b) > 0 {
		_, _ = l.f.Write(b)
	}
}

// Close flushes and closes the file.
func (l *Log) Close() error {
	if l == nil || l.f == nil {
		return nil
	}
	close(l.stop)
	<-l.done
	return l.f.Close()
}

// Now is the wall clock in nanoseconds since the Unix epoch.
func Now() int64 { return time.Now().UnixNano() }

// Tid is the id of the OS thread running the calling goroutine right now.
func Tid() int { return syscall.Gettid() }

// Addr formats a net.Addr as "ip:port" ("" for nil).
func Addr(a net.Addr) string {
	if a == nil {
		return ""
	}
	if t, ok := a.(*net.TCPAddr); ok {
		return net.JoinHostPort(t.IP.String(), fmt.Sprint(t.Port))
	}
	return a.String()
}
