//go:build linux && amd64

package agentconfig_test

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/agent/agentconfig"
	"github.com/deeptrace/deeptrace/agent/capture"
	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/api"
	"github.com/deeptrace/deeptrace/internal/testenv"
)

const peerEnv = "DEEPTRACE_AGENTCONFIG_PEER"

func TestMain(m *testing.M) {
	if os.Getenv(peerEnv) == "1" {
		runPeer()
		return
	}
	os.Exit(m.Run())
}

// runPeer talks to itself over loopback TCP every 20ms until killed.
func runPeer() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		r := bufio.NewReader(c)
		for {
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
			io.WriteString(c, "pong\n")
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		panic(err)
	}
	fmt.Println("READY")
	r := bufio.NewReader(c)
	for {
		io.WriteString(c, "ping\n")
		if _, err := r.ReadString('\n'); err != nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func startPeer(t *testing.T, name string) int {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), name)
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), peerEnv+"=1")
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if !strings.HasPrefix(line, "READY") {
		t.Fatalf("peer %s: %q", name, line)
	}
	return cmd.Process.Pid
}

// counts counts events per pid.
type counts struct {
	mu sync.Mutex
	n  map[uint32]int
}

func (c *counts) get(pid int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[uint32(pid)]
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAgentDropsExcludedProcessWithoutRestart: an agent's tracer follows
// the configuration the API serves; an admin removes one of two traced
// processes from the filter and the tracer stops seeing it, while the
// other goes on; a restarted agent without the API applies the last good
// configuration from disk.
func TestAgentDropsExcludedProcessWithoutRestart(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("capture needs root (CAP_BPF, CAP_PERFMON)")
	}
	tr, err := capture.Open(capture.Config{Comms: []string{"dtcfg-none"}})
	if errors.Is(err, capture.ErrUnavailable) {
		t.Skip(err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	evs := make(chan event.Event, 4096)
	go tr.Run(ctx, evs, nil)
	cnt := &counts{n: map[uint32]int{}}
	go func() {
		for {
			select {
			case e := <-evs:
				cnt.mu.Lock()
				cnt.n[e.PID]++
				cnt.mu.Unlock()
			case <-ctx.Done():
				return
			}
		}
	}()

	// The API, on the real Redis and engine.
	h := api.HashToken("admin-secret")
	admin, err := api.ParseTokenSpec("admin:admin:" + hex.EncodeToString(h[:]))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := api.New(api.Config{Tokens: []api.TokenSpec{admin}},
		api.Deps{Store: testenv.Store(t), Redis: testenv.Redis(t), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	put := func(body string) int {
		req, _ := http.NewRequest("PUT", hs.URL+"/api/v1/config/agent", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer admin-secret")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	a, b := startPeer(t, "dtcfga"), startPeer(t, "dtcfgb")
	if s := put(`{"filters":{"comms":["dtcfga","dtcfgb"]},"sampling":{"rate":1}}`); s != 200 {
		t.Fatalf("put config: %d", s)
	}
	state := filepath.Join(t.TempDir(), "agent-config.json")
	applier := &agentconfig.TracerApplier{Tracer: tr, CgroupID: capture.CgroupID}
	p, err := agentconfig.NewPoller(agentconfig.PollerConfig{URL: hs.URL + "/api/v1/config/agent", Token: "admin-secret",
		StatePath: state, Interval: 100 * time.Millisecond, Wait: 5 * time.Second}, applier.Apply)
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithCancel(ctx)
	pdone := make(chan struct{})
	go func() { p.Run(pctx); close(pdone) }()
	waitFor(t, "both peers traced", 10*time.Second, func() bool { return cnt.get(a) > 10 && cnt.get(b) > 10 })

	if s := put(`{"filters":{"comms":["dtcfga","dtcfgb"],"ports":[70000]}}`); s != 400 {
		t.Fatalf("invalid configuration accepted: %d", s)
	}
	if s := put(`{"filters":{"comms":["dtcfga"]}}`); s != 200 {
		t.Fatalf("put config: %d", s)
	}
	waitFor(t, "configuration version 2 applied", 10*time.Second, func() bool { return p.Status().Version == 2 })
	time.Sleep(300 * time.Millisecond) // events already in the ring
	bAt, aAt := cnt.get(b), cnt.get(a)
	time.Sleep(time.Second)
	if got := cnt.get(b) - bAt; got != 0 {
		t.Errorf("excluded process %d still traced: %d new events", b, got)
	}
	if got := cnt.get(a) - aAt; got < 10 {
		t.Errorf("kept process %d: only %d new events in 1s", a, got)
	}
	pcancel()
	<-pdone

	// The API goes away; a restarted agent keeps the last good
	// configuration from disk and says the API is unreachable.
	hs.Close()
	if err := tr.SetComms("dtcfg-none"); err != nil { // as a fresh agent: nothing traced
		t.Fatal(err)
	}
	p2, _ := agentconfig.NewPoller(agentconfig.PollerConfig{URL: hs.URL + "/api/v1/config/agent", StatePath: state,
		Interval: 100 * time.Millisecond}, applier.Apply)
	p2ctx, p2cancel := context.WithCancel(ctx)
	defer p2cancel()
	go p2.Run(p2ctx)
	waitFor(t, "last good configuration from disk", 5*time.Second, func() bool {
		st := p2.Status()
		return st.Version == 2 && st.Source == "disk" && !st.Reachable && st.LastError != ""
	})
	aAt = cnt.get(a)
	waitFor(t, "kept process traced again from the disk configuration", 5*time.Second, func() bool { return cnt.get(a) > aAt+5 })
}
