package record

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// Proxy is a loopback TCP proxy that records every read() it does from
// either side of each connection it relays.
type Proxy struct {
	ln       net.Listener
	upstream string
	mu       sync.Mutex
	w        *Writer
	conns    int
	wg       sync.WaitGroup
	err      error
}

// NewProxy listens on a free loopback port and relays to upstream.
func NewProxy(upstream string, w *Writer) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, upstream: upstream, w: w}
	go p.serve()
	return p, nil
}

// Addr is where clients connect.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Close stops accepting and waits for the relayed connections to end.
func (p *Proxy) Close() error {
	p.ln.Close()
	p.wg.Wait()
	return p.err
}

func (p *Proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.upstream)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns++
		id := p.conns
		p.mu.Unlock()
		p.wg.Add(2)
		go p.relay(id, "req", c.(*net.TCPConn), u.(*net.TCPConn), 0xffff0000-uint32(id)*7919)
		go p.relay(id, "resp", u.(*net.TCPConn), c.(*net.TCPConn), 0x7fff0000+uint32(id)*104729)
	}
}

// relay copies src to dst, timing each successful read system call
// itself (not the wait for readiness around it).
func (p *Proxy) relay(id int, flow string, src, dst *net.TCPConn, seq uint32) {
	defer p.wg.Done()
	rc, err := src.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 256<<10)
	for {
		var n int
		var rerr error
		var start, end int64
		err := rc.Read(func(fd uintptr) bool {
			start = time.Now().UnixNano()
			n, rerr = syscall.Read(int(fd), buf)
			end = time.Now().UnixNano()
			return !errors.Is(rerr, syscall.EAGAIN)
		})
		if err == nil {
			err = rerr
		}
		if n > 0 {
			p.mu.Lock()
			if werr := p.w.Write(Line{Conn: id, Flow: flow, StartNs: start, EndNs: end, TCPSeq: seq, Data: append([]byte(nil), buf[:n]...)}); werr != nil && p.err == nil {
				p.err = werr
			}
			p.mu.Unlock()
			seq += uint32(n)
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil || n == 0 {
			break
		}
	}
	if err := dst.CloseWrite(); err != nil && !errors.Is(err, io.EOF) {
		dst.Close()
	}
}
