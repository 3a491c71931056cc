// Command testpeer is the TCP server and client that capture's tests run
// as separate processes. Each records the exact bytes it sent and received
// on every connection in files, and reports the connection's tuple, the OS
// thread and the goroutine that worked it, so a test can check what the
// agent captured against the peers' own view.
//
//	testpeer server -listen 127.0.0.1:0 -dir D [-io METHOD]
//	testpeer client -connect ADDR -dir D [-conns N -msgs M -sizes a,b,c -parallel P -io METHOD]
//
// The server prints "ADDR host:port" once listening. The client prints
// "READY", then waits for a line on stdin before it connects. Both print, per connection,
// "CONN <role> <local> <remote> <tid> <goid> <parent-goid>", and the
// client "DONE" at the end. METHOD picks the system calls: write/read,
// sendto/recvfrom, writev/readv, sendmsg/recvmsg, sendmmsg/read,
// sendfile/recvmmsg.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

var (
	listen   = flag.String("listen", "127.0.0.1:0", "server: address to listen on")
	connect  = flag.String("connect", "", "client: address to connect to")
	dir      = flag.String("dir", "", "directory for the byte logs")
	ioMethod = flag.String("io", "write", "system calls: write, sendto, writev, sendmsg, sendmmsg")
	conns    = flag.Int("conns", 4, "client: connections")
	msgs     = flag.Int("msgs", 10, "client: request/response exchanges per connection")
	sizesArg = flag.String("sizes", "16,1000,5000", "client: payload sizes, cycled")
	parallel = flag.Int("parallel", 2, "client: connections worked at once")
	cpu      = flag.Int("cpu", -1, "pin every thread of the process to this CPU")
	dupClose = flag.Bool("dup", false, "client: dup each connection's socket and close the copy first")
	writers  = flag.Int("writers", 0, "client: instead of request/response, this many threads write -msgs messages each to one connection at once, then close; server: use -drain")
	unlocked = flag.Bool("unlocked", false, "client with -writers: the threads' system calls overlap (no Go fd lock around them), as in a C program")
	drain    = flag.Bool("drain", false, "server: read and log each connection until EOF, answer nothing")
)

var out struct {
	sync.Mutex
	w *bufio.Writer
}

func say(format string, args ...any) {
	out.Lock()
	fmt.Fprintf(out.w, format+"\n", args...)
	out.w.Flush()
	out.Unlock()
}

func main() {
	out.w = bufio.NewWriter(os.Stdout)
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testpeer server|client [flags]")
		os.Exit(2)
	}
	role := os.Args[1]
	flag.CommandLine.Parse(os.Args[2:])
	if *cpu >= 0 {
		if err := PinProcess(*cpu); err != nil {
			fmt.Fprintln(os.Stderr, "testpeer: pin:", err)
			os.Exit(1)
		}
	}
	var err error
	switch role {
	case "server":
		err = server()
	case "client":
		err = client()
	case "sink":
		err = sink()
	case "source":
		err = source()
	case "callbench":
		err = callbench()
	case "http":
		err = httpServer()
	case "httpload":
		err = httpLoad()
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "testpeer:", err)
		os.Exit(1)
	}
}

func goid() uint64 {
	var buf [64]byte
	f := strings.Fields(string(buf[:runtime.Stack(buf[:], false)]))
	id, _ := strconv.ParseUint(f[1], 10, 64)
	return id
}

func server() error {
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	say("ADDR %s", ln.Addr())
	parent := goid()
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			runtime.LockOSThread()
			say("CONN server %s %s %d %d %d", c.LocalAddr(), c.RemoteAddr(), unix.Gettid(), goid(), parent)
			if err := serve(c.(*net.TCPConn)); err != nil {
				fmt.Fprintln(os.Stderr, "testpeer: serve:", err)
			}
		}()
	}
}

// A request is a 12-byte header (magic, request length, response length)
// and the request payload; the response is the response payload.
const magic = 0xdeadbeef

func serve(c *net.TCPConn) error {
	defer c.Close()
	l, err := newLog("server", c)
	if err != nil {
		return err
	}
	defer l.close()
	if *drain {
		buf := make([]byte, 64<<10)
		for {
			if err := l.readFull(c, buf[:1]); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
			// The rest of what is queued, in one call.
			n := 0
			var errno error
			l.raw.Read(func(fd uintptr) bool {
				n, errno = recvOnce(int(fd), buf)
				return true
			})
			if errno == nil && n > 0 {
				l.in.Write(buf[:n])
			}
		}
	}
	for {
		hdr := make([]byte, 12)
		if err := l.readFull(c, hdr); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if binary.BigEndian.Uint32(hdr) != magic {
			return fmt.Errorf("bad magic %x", hdr[:4])
		}
		req := make([]byte, binary.BigEndian.Uint32(hdr[4:]))
		if err := l.readFull(c, req); err != nil {
			return err
		}
		resp := pattern(int(binary.BigEndian.Uint32(hdr[8:])), req)
		if err := l.write(c, resp); err != nil {
			return err
		}
	}
}

func client() error {
	sizes := []int{}
	for _, s := range strings.Split(*sizesArg, ",") {
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("-sizes: %v", err)
		}
		sizes = append(sizes, n)
	}
	say("READY")
	bufio.NewReader(os.Stdin).ReadString('\n') // wait for "go"
	parent := goid()
	sem := make(chan struct{}, *parallel)
	errs := make(chan error, *conns)
	var wg sync.WaitGroup
	for i := 0; i < *conns; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			runtime.LockOSThread()
			errs <- exchange(i, sizes, parent)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	say("DONE")
	return nil
}

func exchange(conn int, sizes []int, parent uint64) error {
	nc, err := net.Dial("tcp", *connect)
	if err != nil {
		return err
	}
	c := nc.(*net.TCPConn)
	defer c.Close()
	if *dupClose {
		// Closing a duplicate must not end the connection for the agent.
		raw, _ := c.SyscallConn()
		raw.Control(func(fd uintptr) {
			if d, err := unix.Dup(int(fd)); err == nil {
				unix.Close(d)
			}
		})
	}
	say("CONN client %s %s %d %d %d", c.LocalAddr(), c.RemoteAddr(), unix.Gettid(), goid(), parent)
	l, err := newLog("client", c)
	if err != nil {
		return err
	}
	defer l.close()
	if *writers > 0 {
		return concurrentWrites(c, l, sizes)
	}
	for i := 0; i < *msgs; i++ {
		reqLen := sizes[(conn+i)%len(sizes)]
		respLen := sizes[(conn+i+1)%len(sizes)]
		req := make([]byte, 12+reqLen)
		binary.BigEndian.PutUint32(req, magic)
		binary.BigEndian.PutUint32(req[4:], uint32(reqLen))
		binary.BigEndian.PutUint32(req[8:], uint32(respLen))
		copy(req[12:], pattern(reqLen, []byte{byte(conn), byte(i)}))
		if err := l.write(c, req); err != nil {
			return err
		}
		resp := make([]byte, respLen)
		if err := l.readFull(c, resp); err != nil {
			return err
		}
		if want := pattern(respLen, req[12:]); string(resp) != string(want) {
			return fmt.Errorf("conn %d msg %d: response differs", conn, i)
		}
	}
	return nil
}

// concurrentWrites has several threads write to one socket at once: the
// order of their bytes on the stream is the kernel's, and only the
// receiver's log knows it.
func concurrentWrites(c *net.TCPConn, l *connLog, sizes []int) error {
	var wg sync.WaitGroup
	errs := make(chan error, *writers)
	rawFD := -1
	if *unlocked {
		l.raw.Control(func(fd uintptr) { rawFD = int(fd) })
	}
	for w := 0; w < *writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			for i := 0; i < *msgs; i++ {
				b := pattern(sizes[(w+i)%len(sizes)], []byte{byte(w), byte(i), 'w'})
				for len(b) > 0 {
					var n int
					var errno error
					var err error
					if rawFD >= 0 {
						// Straight to the kernel: another thread's
						// call can be in flight on the socket.
						if n, errno = sendOnce(rawFD, b); errno == unix.EAGAIN {
							n, errno = 0, nil
							runtime.Gosched()
						}
					} else {
						err = l.raw.Write(func(fd uintptr) bool {
							n, errno = sendOnce(int(fd), b)
							return errno != unix.EAGAIN
						})
					}
					if err == nil {
						err = errno
					}
					if err != nil {
						errs <- err
						return
					}
					b = b[n:]
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// pattern is n bytes that depend on seed, different from call to call.
func pattern(n int, seed []byte) []byte {
	var h uint32 = 2166136261
	for _, b := range seed[:min(len(seed), 64)] {
		h = (h ^ uint32(b)) * 16777619
	}
	p := make([]byte, n)
	for i := range p {
		h ^= h << 13
		h ^= h >> 17
		h ^= h << 5
		p[i] = byte(h)
	}
	return p
}

// connLog does the connection's I/O with the chosen system calls and
// records every byte sent (.out) and received (.in).
type connLog struct {
	raw     syscall.RawConn
	in, out *os.File
}

func newLog(role string, c *net.TCPConn) (*connLog, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("%s_%s_%s", role, c.LocalAddr(), c.RemoteAddr())
	name = strings.NewReplacer(":", "_", "[", "", "]", "").Replace(name)
	in, err := os.Create(filepath.Join(*dir, name+".in"))
	if err != nil {
		return nil, err
	}
	o, err := os.Create(filepath.Join(*dir, name+".out"))
	if err != nil {
		return nil, err
	}
	return &connLog{raw: raw, in: in, out: o}, nil
}

func (l *connLog) close() {
	l.in.Close()
	l.out.Close()
}

func (l *connLog) write(c *net.TCPConn, b []byte) error {
	for len(b) > 0 {
		var n int
		var errno error
		err := l.raw.Write(func(fd uintptr) bool {
			n, errno = sendOnce(int(fd), b)
			return errno != unix.EAGAIN
		})
		if err != nil {
			return err
		}
		if errno != nil {
			return errno
		}
		l.out.Write(b[:n])
		b = b[n:]
	}
	return nil
}

func (l *connLog) readFull(c *net.TCPConn, b []byte) error {
	got := 0
	for got < len(b) {
		var n int
		var errno error
		err := l.raw.Read(func(fd uintptr) bool {
			n, errno = recvOnce(int(fd), b[got:])
			return errno != unix.EAGAIN
		})
		if err != nil {
			return err
		}
		if errno != nil {
			return errno
		}
		if n == 0 {
			if got == 0 {
				return io.EOF
			}
			return io.ErrUnexpectedEOF
		}
		l.in.Write(b[got : got+n])
		got += n
	}
	return nil
}

// split cuts b into up to three iovecs of uneven sizes.
func split(b []byte) [][]byte {
	if len(b) < 3 {
		return [][]byte{b}
	}
	a, c := len(b)/5+1, len(b)/2+1
	return [][]byte{b[:a], b[a:c], b[c:]}
}

func iovecs(parts [][]byte) []unix.Iovec {
	iov := make([]unix.Iovec, len(parts))
	for i, p := range parts {
		iov[i].Base = &p[0]
		iov[i].SetLen(len(p))
	}
	return iov
}

func errnoOf(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func sendOnce(fd int, b []byte) (int, error) {
	switch *ioMethod {
	case "write", "recvmmsg":
		return unix.Write(fd, b)
	case "sendto":
		n, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0)
		return int(n), errnoOf(e)
	case "writev":
		return unix.Writev(fd, split(b))
	case "sendmsg":
		iov := iovecs(split(b))
		msg := unix.Msghdr{Iov: &iov[0]}
		msg.SetIovlen(len(iov))
		n, _, e := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), 0)
		return int(n), errnoOf(e)
	case "sendmmsg":
		// Two messages: the halves of b. The call returns how many went.
		parts := [][]byte{b}
		if len(b) > 1 {
			parts = [][]byte{b[:len(b)/2], b[len(b)/2:]}
		}
		vec := make([]mmsghdr, len(parts))
		iov := iovecs(parts)
		for i := range vec {
			vec[i].hdr.Iov = &iov[i]
			vec[i].hdr.SetIovlen(1)
		}
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&vec[0])), uintptr(len(vec)), 0, 0, 0)
		if e != 0 {
			return 0, e
		}
		n := 0
		for i := 0; i < int(r); i++ {
			n += int(vec[i].n)
		}
		return n, nil
	case "sendfile":
		// The bytes go from a file (a memfd) to the socket.
		mfd, err := unix.MemfdCreate("testpeer", 0)
		if err != nil {
			return 0, err
		}
		defer unix.Close(mfd)
		if _, err := unix.Write(mfd, b); err != nil {
			return 0, err
		}
		var off int64
		return unix.Sendfile(fd, mfd, &off, len(b))
	}
	return 0, fmt.Errorf("unknown -io %q", *ioMethod)
}

type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

func recvOnce(fd int, b []byte) (int, error) {
	switch *ioMethod {
	case "write", "sendmmsg", "sendfile":
		return unix.Read(fd, b)
	case "recvmmsg":
		// Two messages: the halves of b, filled one after the other.
		parts := [][]byte{b}
		if len(b) > 1 {
			parts = [][]byte{b[:len(b)/2], b[len(b)/2:]}
		}
		vec := make([]mmsghdr, len(parts))
		iov := iovecs(parts)
		for i := range vec {
			vec[i].hdr.Iov = &iov[i]
			vec[i].hdr.SetIovlen(1)
		}
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&vec[0])), uintptr(len(vec)), 0, 0, 0)
		if e != 0 {
			return 0, e
		}
		// The stream's bytes are the messages' bytes end to end: close
		// the hole a short first message leaves.
		n := 0
		for i := 0; i < int(r); i++ {
			n += copy(b[n:], parts[i][:vec[i].n])
		}
		return n, nil
	case "sendto":
		n, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0)
		return int(n), errnoOf(e)
	case "writev":
		return unix.Readv(fd, split(b))
	case "sendmsg":
		iov := iovecs(split(b))
		msg := unix.Msghdr{Iov: &iov[0]}
		msg.SetIovlen(len(iov))
		n, _, e := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), 0)
		return int(n), errnoOf(e)
	}
	return 0, fmt.Errorf("unknown -io %q", *ioMethod)
}
