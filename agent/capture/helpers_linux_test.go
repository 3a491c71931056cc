//go:build linux && amd64

package capture

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/deeptrace/deeptrace/agent/event"
)

// Shared by the tests that need the kernel: the peer binary, built once.
var (
	peerOnce sync.Once
	peerPath string
	peerErr  error
	peerDir  string
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		openAsChild() // TestUnprivilegedOpen's child: never returns
	}
	code := m.Run()
	if peerDir != "" {
		os.RemoveAll(peerDir)
	}
	os.Exit(code)
}

// buildPeer builds internal/testpeer with DWARF (go test binaries have none),
// so the agent can read goroutine ids in it.
func buildPeer(t testing.TB) string {
	peerOnce.Do(func() {
		peerDir, peerErr = os.MkdirTemp("", "capture-peer-")
		if peerErr != nil {
			return
		}
		peerPath = filepath.Join(peerDir, "testpeer")
		out, err := exec.Command("go", "build", "-o", peerPath, "./internal/testpeer").CombinedOutput()
		if err != nil {
			peerErr = fmt.Errorf("go build testpeer: %v\n%s", err, out)
		}
	})
	if peerErr != nil {
		t.Fatal(peerErr)
	}
	return peerPath
}

// openTracer opens a Tracer or skips the test with the reason eBPF is
// unavailable.
func openTracer(t testing.TB, cfg Config) *Tracer {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("capture needs root (CAP_BPF, CAP_PERFMON): running as uid", os.Geteuid())
	}
	tr, err := Open(cfg)
	if errors.Is(err, ErrUnavailable) {
		// A program the verifier refused is a bug, not a machine
		// without eBPF.
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatal(err)
		}
		t.Skip(err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// collector runs a Tracer and keeps every event it delivers.
type collector struct {
	mu     sync.Mutex
	events []event.Event
	goevs  []event.GoEvent
	cancel context.CancelFunc
	done   chan error
}

func collect(t testing.TB, tr *Tracer) *collector {
	ctx, cancel := context.WithCancel(context.Background())
	c := &collector{cancel: cancel, done: make(chan error, 1)}
	out := make(chan event.Event, 4096)
	goOut := make(chan event.GoEvent, 4096)
	go func() { c.done <- tr.Run(ctx, out, goOut) }()
	go func() {
		for {
			select {
			case e := <-out:
				c.mu.Lock()
				c.events = append(c.events, e)
				c.mu.Unlock()
			case g := <-goOut:
				c.mu.Lock()
				c.goevs = append(c.goevs, g)
				c.mu.Unlock()
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() { c.stop(t) })
	return c
}

// collectRead is collect through Read: payloads are borrowed from the ring
// buffer, and copied here as the agent would.
func collectRead(t testing.TB, tr *Tracer) *collector {
	ctx, cancel := context.WithCancel(context.Background())
	c := &collector{cancel: cancel, done: make(chan error, 1)}
	go func() {
		c.done <- tr.Read(ctx, func(evs []event.Event, gevs []event.GoEvent) {
			c.mu.Lock()
			defer c.mu.Unlock()
			for _, e := range evs {
				e.Payload = append([]byte(nil), e.Payload...)
				c.events = append(c.events, e)
			}
			c.goevs = append(c.goevs, gevs...)
		})
	}()
	t.Cleanup(func() { c.stop(t) })
	return c
}

func (c *collector) stop(t testing.TB) {
	if c.cancel == nil {
		return
	}
	c.cancel()
	c.cancel = nil
	if err := <-c.done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// wait returns the events once pred holds for them, or fails after timeout.
func (c *collector) wait(t testing.TB, timeout time.Duration, what string, pred func([]event.Event) bool) []event.Event {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		evs := append([]event.Event(nil), c.events...)
		c.mu.Unlock()
		if pred(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("timeout after %v waiting for %s (%d events)", timeout, what, len(evs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *collector) goEvents() []event.GoEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]event.GoEvent(nil), c.goevs...)
}

// peer is one running testpeer process.
type peer struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	addr   string
	conns  []peerConn
	done   bool
	errBuf *strings.Builder
}

// peerConn is one connection as a peer saw it.
type peerConn struct {
	role          event.Role
	raw           [2]string // local and remote as the peer printed them
	local, remote netip.AddrPort
	tid           uint32
	goid, parent  uint64
}

// startPeer runs testpeer with args, optionally through a wrapper command
// (ip netns exec ...).
func startPeer(t testing.TB, wrapper []string, args ...string) *peer {
	t.Helper()
	return startPeerBin(t, buildPeer(t), wrapper, args...)
}

// startPeerBin is startPeer with another copy of the binary (another comm).
func startPeerBin(t testing.TB, bin string, wrapper []string, args ...string) *peer {
	t.Helper()
	argv := append(append(append([]string{}, wrapper...), bin), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	p := &peer{cmd: cmd, lines: make(chan string, 1024), errBuf: &strings.Builder{}}
	cmd.Stderr = p.errBuf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.stdin, err = cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
	}()
	return p
}

func (p *peer) pid() int { return p.cmd.Process.Pid }

// expect reads the peer's lines until one starts with prefix.
func (p *peer) expect(t testing.TB, prefix string, timeout time.Duration) string {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("peer %d ended before %q: %s", p.pid(), prefix, p.errBuf)
			}
			if strings.HasPrefix(line, "CONN ") {
				p.conns = append(p.conns, parseConn(t, line))
			}
			if strings.HasPrefix(line, prefix) {
				return line
			}
		case <-timer.C:
			t.Fatalf("peer %d: no %q within %v: %s", p.pid(), prefix, timeout, p.errBuf)
		}
	}
}

// drain collects the CONN lines still buffered.
func (p *peer) drain(t testing.TB) {
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				return
			}
			if strings.HasPrefix(line, "CONN ") {
				p.conns = append(p.conns, parseConn(t, line))
			}
		default:
			return
		}
	}
}

func parseConn(t testing.TB, line string) peerConn {
	f := strings.Fields(line) // CONN role local remote tid goid parent
	if len(f) != 7 {
		t.Fatalf("bad CONN line %q", line)
	}
	var c peerConn
	c.role = event.RoleClient
	if f[1] == "server" {
		c.role = event.RoleServer
	}
	c.raw = [2]string{f[2], f[3]}
	c.local = netip.MustParseAddrPort(f[2])
	c.remote = netip.MustParseAddrPort(f[3])
	c.local = netip.AddrPortFrom(c.local.Addr().Unmap(), c.local.Port())
	c.remote = netip.AddrPortFrom(c.remote.Addr().Unmap(), c.remote.Port())
	tid, _ := strconv.ParseUint(f[4], 10, 32)
	c.tid = uint32(tid)
	c.goid, _ = strconv.ParseUint(f[5], 10, 64)
	c.parent, _ = strconv.ParseUint(f[6], 10, 64)
	return c
}

// logName is the byte log a peer wrote for a connection.
func logName(dir string, c peerConn, suffix string) string {
	role := "client"
	if c.role == event.RoleServer {
		role = "server"
	}
	name := fmt.Sprintf("%s_%s_%s", role, c.raw[0], c.raw[1])
	name = strings.NewReplacer(":", "_", "[", "", "]", "").Replace(name)
	return filepath.Join(dir, name+suffix)
}
