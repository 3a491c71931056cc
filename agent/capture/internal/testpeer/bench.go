package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Modes for capture's benchmarks:
//
//	testpeer sink -listen ADDR              read and discard every connection
//	testpeer source -listen ADDR            answer an 8-byte count with that many bytes
//	testpeer callbench -connect ADDR|self -op OP -n N -size S
//	                                        after "go" on stdin, make N blocking
//	                                        calls of S bytes (write, sendto, read,
//	                                        recvfrom) on one thread; print
//	                                        "NS <total ns> <calls>"
//	testpeer http -listen ADDR -size B -work W
//	                                        an HTTP server answering B bytes after
//	                                        W SHA-256 rounds (application work)
//	testpeer httpload -url U -c C -d D      C keep-alive clients for D; prints
//	                                        "RPS <requests per second> <requests>"

func sink() error {
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	say("ADDR %s", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
	}
}

// source answers each connection's 8-byte request (a byte count) with
// that many bytes, then waits for the peer to close.
func source() error {
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	say("ADDR %s", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			var req [8]byte
			if _, err := io.ReadFull(c, req[:]); err != nil {
				return
			}
			left := int64(binary.LittleEndian.Uint64(req[:]))
			buf := make([]byte, 64<<10)
			for left > 0 {
				n, err := c.Write(buf[:min(int64(len(buf)), left)])
				if err != nil {
					return
				}
				left -= int64(n)
			}
			io.Copy(io.Discard, c)
		}()
	}
}

var (
	op    = flag.String("op", "write", "callbench: write, sendto, read, recvfrom")
	calls = flag.Int("n", 100000, "callbench: calls")
	size  = flag.Int("size", 64, "callbench: bytes per call; http: response body")
	conc  = flag.Int("c", 8, "httpload: concurrent clients")
	dur   = flag.Duration("d", 3*time.Second, "httpload: duration")
	url   = flag.String("url", "", "httpload: URL")
	work  = flag.Int("work", 0, "http: SHA-256 rounds over 1 KiB per request, as application work")
)

// callbench measures blocking calls on a plain (blocking) socket, without
// Go's netpoller in between. With -connect self the peer is a socket of
// this process that does nothing while the loop runs: writes land in its
// (large) receive queue, never accepted; reads find every byte already
// queued. Nothing else then runs on the machine for the measurement's
// sake.
func callbench() error {
	total := int64(*calls) * int64(*size)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, int(min(4*total+(1<<20), 1<<30)))
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 64<<20)
	var sa unix.SockaddrInet4
	var lfd int
	if *connect == "self" {
		lfd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err != nil {
			return err
		}
		// Accepted sockets inherit the listener's buffer size.
		unix.SetsockoptInt(lfd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1<<30)
		if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return err
		}
		if err := unix.Listen(lfd, 16); err != nil {
			return err
		}
		la, err := unix.Getsockname(lfd)
		if err != nil {
			return err
		}
		sa = *la.(*unix.SockaddrInet4)
	} else {
		ap, err := net.ResolveTCPAddr("tcp", *connect)
		if err != nil {
			return err
		}
		copy(sa.Addr[:], ap.IP.To4())
		sa.Port = ap.Port
	}
	if err := unix.Connect(fd, &sa); err != nil {
		return err
	}
	buf := make([]byte, *size)
	if *op == "read" || *op == "recvfrom" {
		if *connect == "self" {
			cfd, _, err := unix.Accept(lfd)
			if err != nil {
				return err
			}
			chunk := make([]byte, 64<<10)
			for left := total; left > 0; {
				n, err := unix.Write(cfd, chunk[:min(int64(len(chunk)), left)])
				if err != nil {
					return err
				}
				left -= int64(n)
			}
		} else {
			var req [8]byte
			binary.LittleEndian.PutUint64(req[:], uint64(total))
			if _, err := unix.Write(fd, req[:]); err != nil {
				return err
			}
		}
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
			queued, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
			if err != nil {
				return err
			}
			if int64(queued) >= total {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("only %d of %d bytes queued", queued, total)
			}
		}
	}
	say("READY")
	bufio.NewReader(os.Stdin).ReadString('\n')
	runtime.LockOSThread()
	p := uintptr(unsafe.Pointer(&buf[0]))
	n := uintptr(len(buf))
	var nr uintptr
	switch *op {
	case "write":
		nr = unix.SYS_WRITE
	case "read":
		nr = unix.SYS_READ
	case "sendto":
		nr = unix.SYS_SENDTO
	case "recvfrom":
		nr = unix.SYS_RECVFROM
	default:
		return fmt.Errorf("-op %q", *op)
	}
	start := time.Now()
	for i := 0; i < *calls; i++ {
		if _, _, e := unix.Syscall6(nr, uintptr(fd), p, n, 0, 0, 0); e != 0 {
			return e
		}
	}
	el := time.Since(start)
	say("NS %d %d", el.Nanoseconds(), *calls)
	return nil
}

func httpServer() error {
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	say("ADDR %s", ln.Addr())
	body := make([]byte, *size)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	return http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var sum [32]byte
		for i := 0; i < *work; i++ {
			sum = sha256.Sum256(body[:min(1024, len(body))])
		}
		w.Header().Set("X-Work", hex.EncodeToString(sum[:4]))
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	}))
}

func httpLoad() error {
	tr := &http.Transport{MaxIdleConnsPerHost: *conc, MaxConnsPerHost: *conc}
	client := &http.Client{Transport: tr}
	say("READY")
	bufio.NewReader(os.Stdin).ReadString('\n')
	ctx, cancel := context.WithTimeout(context.Background(), *dur)
	defer cancel()
	var count atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	start := time.Now()
	for i := 0; i < *conc; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				resp, err := client.Get(*url)
				if err != nil {
					if ctx.Err() == nil {
						firstErr.CompareAndSwap(nil, err)
					}
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					count.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if err, ok := firstErr.Load().(error); ok {
		return err
	}
	say("RPS %.1f %d", float64(count.Load())/el.Seconds(), count.Load())
	return nil
}
