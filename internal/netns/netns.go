// Package netns simulates several hosts on one machine for tests: one Linux
// network namespace per host, each with an eth0 joined to a bridge in the
// root namespace, so hosts reach each other and, through the bridge's
// address, whatever the test serves there (proxies to the local engines,
// which listen on loopback only). A host can run commands (ip netns exec),
// run Go code with sockets inside it, install NAT rules of its own, and
// capture its own packets.
//
// It needs root and iproute2; New skips the test, saying why, when either
// is missing.
package netns

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Net is a set of simulated hosts on one bridge.
type Net struct {
	// Bridge is the bridge's interface name in the root namespace.
	Bridge string
	// Gateway is the bridge's address: the root namespace as the hosts see
	// it.
	Gateway string
	Hosts   []*Host
	t       testing.TB
}

// Host is one simulated host.
type Host struct {
	Name string // the namespace, also the host name
	IP   string // eth0's address
	net  *Net
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Available says why namespaces cannot be built here, or "" when they can.
func Available() string {
	if os.Geteuid() != 0 {
		return "network namespaces need root"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "iproute2's ip is not installed"
	}
	return ""
}

// New builds one namespace per name on a fresh bridge with a /24 of its
// own, and removes everything when the test ends.
func New(t testing.TB, names ...string) *Net {
	t.Helper()
	if why := Available(); why != "" {
		t.Skip(why)
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	tag := hex.EncodeToString(b[:2])
	// A /24 in 10.200-249.x.0 that no route of this machine uses yet.
	subnet := ""
	for i := 0; i < 50 && subnet == ""; i++ {
		_, _ = rand.Read(b[:])
		cand := fmt.Sprintf("10.%d.%d", 200+int(b[0])%50, int(b[1])%250)
		out, _ := exec.Command("ip", "-4", "route", "show", "match", cand+".1").Output()
		if !strings.Contains(string(out), cand+".") {
			subnet = cand
		}
	}
	if subnet == "" {
		t.Fatal("netns: no free 10.x.y.0/24")
	}
	n := &Net{Bridge: "dtb" + tag, Gateway: subnet + ".1", t: t}
	t.Cleanup(n.teardown)
	must := func(args ...string) {
		t.Helper()
		if err := run(args...); err != nil {
			t.Fatalf("netns: %v", err)
		}
	}
	must("ip", "link", "add", n.Bridge, "type", "bridge")
	must("ip", "addr", "add", n.Gateway+"/24", "dev", n.Bridge)
	must("ip", "link", "set", n.Bridge, "up")
	for i, name := range names {
		h := &Host{Name: name + "-" + tag, IP: fmt.Sprintf("%s.%d", subnet, 10+i), net: n}
		outer := fmt.Sprintf("dtv%s%d", tag, i)
		must("ip", "netns", "add", h.Name)
		n.Hosts = append(n.Hosts, h)
		must("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", h.Name)
		must("ip", "link", "set", outer, "master", n.Bridge)
		must("ip", "link", "set", outer, "up")
		must("ip", "netns", "exec", h.Name, "ip", "addr", "add", h.IP+"/24", "dev", "eth0")
		must("ip", "netns", "exec", h.Name, "ip", "link", "set", "eth0", "up")
		must("ip", "netns", "exec", h.Name, "ip", "link", "set", "lo", "up")
		must("ip", "netns", "exec", h.Name, "ip", "route", "add", "default", "via", n.Gateway)
	}
	return n
}

func (n *Net) teardown() {
	for _, h := range n.Hosts {
		if err := run("ip", "netns", "del", h.Name); err != nil {
			n.t.Logf("netns cleanup: %v", err)
		}
	}
	if err := run("ip", "link", "del", n.Bridge); err != nil {
		n.t.Logf("netns cleanup: %v", err)
	}
}

// Command runs name inside the host's namespace.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", h.Name, name}, args...)...)
}

// Run runs a command inside the host's namespace and fails the test when
// it fails.
func (h *Host) Run(args ...string) {
	h.net.t.Helper()
	if err := run(append([]string{"ip", "netns", "exec", h.Name}, args...)...); err != nil {
		h.net.t.Fatalf("netns %s: %v", h.Name, err)
	}
}

// Do runs fn on an OS thread that has entered the host's namespace.
// Sockets fn creates belong to the namespace for good, and can be used
// from any goroutine afterwards. The thread is discarded after fn.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread dies with the goroutine instead of
		// going back to the scheduler in the wrong namespace.
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+h.Name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("netns %s: %w", h.Name, err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", h.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Listen opens a listener inside the host.
func (h *Host) Listen(addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	return ln, err
}

// Dial connects from inside the host.
func (h *Host) Dial(addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		c, err = net.Dial("tcp4", addr)
		return err
	})
	return c, err
}

// Proxy listens on the gateway address (the root namespace, as the hosts
// see it) and forwards every connection to target (e.g. 127.0.0.1:9250):
// how processes inside the hosts reach engines bound to loopback. It
// returns the address to give them.
func (n *Net) Proxy(target string) string {
	ln, err := net.Listen("tcp4", n.Gateway+":0")
	if err != nil {
		n.t.Fatalf("netns proxy: %v", err)
	}
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	n.t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				up, err := net.Dial("tcp", target)
				if err != nil {
					c.Close()
					return
				}
				mu.Lock()
				conns[c], conns[up] = true, true
				mu.Unlock()
				go func() { io.Copy(up, c); up.Close() }()
				io.Copy(c, up)
				c.Close()
			}()
		}
	}()
	return ln.Addr().String()
}
