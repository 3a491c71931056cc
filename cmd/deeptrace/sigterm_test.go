package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/ops"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// sigtermCase is one long-running command under the SIGTERM test.
type sigtermCase struct {
	command string
	// grace is the pod's terminationGracePeriodSeconds in k8s/: the
	// command must have exited by then.
	grace time.Duration
	// readyLog, when set, also counts as started once stderr holds it
	// (for a command whose endpoint comes later than its work).
	readyLog string
	// setup prepares the run and returns extra arguments.
	setup func(t *testing.T, e *sigtermEnv) []string
	// work runs once the command is up, before SIGTERM: what it must not
	// lose.
	work func(t *testing.T, e *sigtermEnv)
	// check runs after a clean exit: was the work done?
	check func(t *testing.T, e *sigtermEnv)
}

// sigtermEnv is what a case shares between its hooks.
type sigtermEnv struct {
	dir     string
	store   *store.Store
	redisDB int
	addr    string
	stderr  *syncBuffer
	state   map[string]any
}

// sigtermCases lists every long-running command; those not in the binary
// yet are skipped, saying so.
var sigtermCases = []sigtermCase{
	{command: "agent", grace: 30 * time.Second, readyLog: "capture attached", setup: agentSetup, work: agentWork, check: agentCheck},
	{command: "scheduler", grace: 30 * time.Second},
	{command: "worker", grace: 60 * time.Second},
	{command: "api", grace: 30 * time.Second, setup: func(*testing.T, *sigtermEnv) []string {
		return []string{"--token", fmt.Sprintf("sigterm:viewer:%x", sha256.Sum256([]byte("sigterm")))}
	}},
	{command: "retention", grace: 30 * time.Second, setup: retentionSetup, work: retentionWork},
}

var (
	sigtermOnce sync.Once
	sigtermBin  string
	sigtermErr  error
)

// sigtermBinary builds the deeptrace binary once for the SIGTERM tests.
func sigtermBinary(t *testing.T) string {
	t.Helper()
	sigtermOnce.Do(func() {
		dir, err := os.MkdirTemp("", "deeptrace-sigterm")
		if err != nil {
			sigtermErr = err
			return
		}
		sigtermBin = filepath.Join(dir, "deeptrace")
		out, err := exec.Command("go", "build", "-o", sigtermBin, ".").CombinedOutput()
		if err != nil {
			sigtermErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if sigtermErr != nil {
		t.Fatal(sigtermErr)
	}
	return sigtermBin
}

// binaryFlags maps each command path of the binary to its flags.
func binaryFlags(t *testing.T, bin string) map[string]map[string]bool {
	t.Helper()
	out, err := exec.Command(bin, "flags").Output()
	if err != nil {
		t.Fatalf("deeptrace flags: %v", err)
	}
	var cmds []commandFlags
	if err := json.Unmarshal(out, &cmds); err != nil {
		t.Fatal(err)
	}
	m := map[string]map[string]bool{}
	for _, c := range cmds {
		m[c.Path] = map[string]bool{}
		for _, f := range c.Flags {
			m[c.Path][f] = true
		}
	}
	return m
}

// TestSIGTERM starts every long-running command against the real engines,
// gives it work, sends SIGTERM, and requires exit status 0 within the
// grace period its pod has in k8s/, with the work done.
func TestSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := sigtermBinary(t)
	commands := binaryFlags(t, bin)
	for _, c := range sigtermCases {
		t.Run(c.command, func(t *testing.T) {
			flags, ok := commands[c.command]
			if !ok {
				t.Skipf("deeptrace has no %q command yet", c.command)
			}
			runSIGTERM(t, bin, c, flags)
		})
	}
}

func runSIGTERM(t *testing.T, bin string, c sigtermCase, flags map[string]bool) {
	e := &sigtermEnv{dir: t.TempDir(), store: testenv.Store(t), stderr: &syncBuffer{}, state: map[string]any{}}
	if flags["redis-addr"] {
		e.redisDB = testenv.Redis(t).Options().DB
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = ln.Addr().String()
	ln.Close()

	args := []string{c.command}
	listen := ops.FlagListen
	if !flags[listen] {
		listen = "listen"
	}
	for flag, value := range map[string]string{
		listen: e.addr, "log-format": "text", "log-level": "debug",
		"es-url": testenv.ESURL(), "es-engine": string(testenv.ESEngine()), "es-prefix": e.store.Indices().Prefix,
		"redis-addr": testenv.RedisAddr(), "redis-db": strconv.Itoa(e.redisDB),
	} {
		if flags[flag] {
			args = append(args, "--"+flag, value)
		}
	}
	if c.setup != nil {
		args = append(args, c.setup(t, e)...)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = e.stderr
	cmd.Env = append(os.Environ(), "DEEPTRACE_CONFIG=")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })

	// Started: the health endpoint answers, or the log says so.
	served := false
	deadline := time.Now().Add(20 * time.Second)
	for !served {
		if res, err := http.Get("http://" + e.addr + ops.PathHealthz); err == nil {
			res.Body.Close()
			served = res.StatusCode == http.StatusOK
		}
		if !served && c.readyLog != "" && strings.Contains(e.stderr.String(), c.readyLog) {
			break
		}
		select {
		case err := <-exited:
			if c.command == "agent" && strings.Contains(e.stderr.String(), "privilege") {
				t.Skipf("the agent cannot load eBPF here: %s", e.stderr.String())
			}
			t.Fatalf("deeptrace %v exited before it started: %v\n%s", args, err, e.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("deeptrace %s: not started after 20s (nothing on %s)\n%s", c.command, e.addr, e.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if c.work != nil {
		c.work(t, e)
	}
	if !served {
		if res, err := http.Get("http://" + e.addr + ops.PathHealthz); err == nil {
			res.Body.Close()
		} else {
			t.Errorf("deeptrace %s serves no %s on --%s %s, which its pod's probes ask for (serve it with ops.Serve)", c.command, ops.PathHealthz, listen, e.addr)
		}
	}

	sent := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("deeptrace %s after SIGTERM: %v, want exit status 0\n%s", c.command, err, e.stderr.String())
		}
		t.Logf("deeptrace %s exited 0, %s after SIGTERM (grace %s)", c.command, time.Since(sent).Round(time.Millisecond), c.grace)
	case <-time.After(c.grace):
		t.Fatalf("deeptrace %s still running %s (its grace period) after SIGTERM\n%s", c.command, c.grace, e.stderr.String())
	}
	if _, err := http.Get("http://" + e.addr + ops.PathHealthz); err == nil {
		t.Errorf("something still answers on %s after deeptrace %s exited", e.addr, c.command)
	}
	if c.check != nil {
		c.check(t, e)
	}
}

// The agent traces a peer process serving HTTP: the server span of every
// exchange made before SIGTERM must be in its output when it exits.
const agentRequests = 20

// peerEnv makes the test binary a plain HTTP server (TestSIGTERMPeer).
const peerEnv = "DEEPTRACE_SIGTERM_PEER"

// TestSIGTERMPeer is the agent case's traced process, not a test: run with
// DEEPTRACE_SIGTERM_PEER=1 it prints its address and serves until killed.
func TestSIGTERMPeer(t *testing.T) {
	if os.Getenv(peerEnv) != "1" {
		t.Skip("the HTTP peer TestSIGTERM/agent starts in a process of its own")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(ln.Addr().String())
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok "+r.URL.Path)
	}))
}

func agentSetup(t *testing.T, e *sigtermEnv) []string {
	peer, addr := startPeer(t, "TestSIGTERMPeer", peerEnv+"=1")
	e.state["peer"] = "http://" + addr
	spans := filepath.Join(e.dir, "spans.jsonl")
	e.state["spans"] = spans
	return []string{"--pid", strconv.Itoa(peer.Process.Pid), "--spans-out", spans, "--host", "sigterm"}
}

func agentWork(t *testing.T, e *sigtermEnv) {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range agentRequests {
		res, err := client.Get(fmt.Sprintf("%s/sigterm/%d", e.state["peer"], i))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
}

func agentCheck(t *testing.T, e *sigtermEnv) {
	f, err := os.Open(e.state["spans"].(string))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var sp schemas.Span
		if err := json.Unmarshal(sc.Bytes(), &sp); err != nil {
			t.Fatalf("span line %q: %v", sc.Text(), err)
		}
		if sp.Role == schemas.RoleServer {
			seen[sp.Path] = true
		}
	}
	var lost []int
	for i := range agentRequests {
		if !seen[fmt.Sprintf("/sigterm/%d", i)] {
			lost = append(lost, i)
		}
	}
	if len(lost) > 0 {
		t.Errorf("lost on SIGTERM: the server spans of requests %v of 0..%d\n%s", lost, agentRequests-1, e.stderr.String())
	}
}

// Retention is started with expired indices; they must be gone by the time
// it has exited on SIGTERM.
func retentionSetup(t *testing.T, e *sigtermEnv) []string {
	ix := e.store.Indices()
	var names []string
	for _, age := range []time.Duration{100 * time.Hour, 200 * time.Hour} {
		names = append(names, ix.Name(schemas.KindSpans, time.Now().Add(-age)))
	}
	es := e.store.Client()
	for _, n := range names {
		res, err := es.Indices.Create(n)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.IsError() {
			t.Fatalf("create %s: %s", n, res.Status())
		}
	}
	e.state["expired"] = names
	return []string{"--every", "1h", "--spans-age", "72h"}
}

func retentionWork(t *testing.T, e *sigtermEnv) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		infos, err := e.store.ListIndices(context.Background(), e.store.Indices().Pattern(schemas.KindSpans))
		if err != nil {
			t.Fatal(err)
		}
		if len(infos) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("retention left %v", infos)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer the child's stderr copier and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startPeer runs this test binary's peer test `run` in a process of its
// own, with the environment setting env (NAME=VALUE) that makes it serve,
// and returns the process and the first line it prints (its address, or
// READY), trimmed. The process is killed when the test ends.
func startPeer(t *testing.T, run, env string) (*exec.Cmd, string) {
	t.Helper()
	peer := exec.Command(os.Args[0], "-test.run=^"+run+"$")
	peer.Env = append(os.Environ(), env)
	out, err := peer.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := peer.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Process.Kill(); peer.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("peer %s: %v", run, err)
	}
	return peer, strings.TrimSpace(line)
}
