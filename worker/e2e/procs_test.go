// Package e2e tests the assembly pipeline as it runs in production: the
// deeptrace binary's export-spans, scheduler and worker processes against
// the real OpenSearch and Redis, with hosts simulated in network
// namespaces.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
	"github.com/deeptrace/deeptrace/worker/assemble/assembletest"
)

// bin is the deeptrace binary TestMain builds.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "deeptrace-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "deeptrace")
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	build := exec.Command("go", "build", "-o", bin, "./cmd/deeptrace")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build deeptrace: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is the test's engines: a Redis database and an index prefix of its
// own, and the flags that point a deeptrace process at them.
type env struct {
	es  *store.Store
	rdb *redis.Client
}

func newEnv(t *testing.T) *env {
	return &env{es: testenv.Store(t), rdb: testenv.Redis(t)}
}

func (e *env) esFlags(url string) []string {
	if url == "" {
		url = testenv.ESURL()
	}
	return []string{"--es-url", url, "--es-engine", string(testenv.ESEngine()), "--es-prefix", e.es.Indices().Prefix}
}

func (e *env) redisFlags() []string {
	return []string{"--redis-addr", testenv.RedisAddr(), "--redis-db", strconv.Itoa(e.rdb.Options().DB)}
}

// proc is a deeptrace process the test started.
type proc struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
	err  error
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

// Output is what the process wrote so far (stdout and stderr).
func (p *proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// childEnv is the test's environment without DEEPTRACE_ settings (every
// flag of the binary reads one), plus extra.
func childEnv(extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DEEPTRACE_") {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

// start runs a command (the binary, or ip netns exec around it) and stops
// it when the test ends; its output is logged if the test fails.
func start(t *testing.T, name string, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p, p
	if cmd.Env == nil {
		cmd.Env = childEnv()
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(5 * time.Second)
		if t.Failed() {
			t.Logf("---- %s output ----\n%s", name, tail(p.Output(), 60))
		}
	})
	return p
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// stop sends SIGTERM and waits, then SIGKILL.
func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// wait waits for the process to exit.
func (p *proc) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		t.Fatalf("%s still running after %s", p.name, d)
		return nil
	}
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// traces reads every trace document of [from, to], by id.
func traces(t *testing.T, es *store.Store, from, to time.Time) (map[string]schemas.Trace, int) {
	t.Helper()
	ctx := context.Background()
	es.Refresh(ctx, es.Indices().Pattern(schemas.KindTraces))
	out := map[string]schemas.Trace{}
	docs := 0
	err := es.Scan(ctx, store.Query{Kind: schemas.KindTraces, From: from, To: to, PageSize: 500}, func(hits []store.Hit) error {
		for _, h := range hits {
			var tr schemas.Trace
			if err := json.Unmarshal(h.Source, &tr); err != nil {
				return err
			}
			docs++
			out[tr.TraceID] = tr
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, docs
}

// exactly compares the stored traces with the expected set: every trace
// once, whole, with its tree, and nothing else (no fragment). It returns
// a description of the first differences, or "".
func exactly(set *assembletest.Set, got map[string]schemas.Trace, docs int) string {
	var diffs []string
	want := map[string]bool{}
	for _, r := range set.Roots {
		want[schemas.TraceID(r)] = true
	}
	if docs != len(got) {
		diffs = append(diffs, fmt.Sprintf("%d documents for %d trace ids", docs, len(got)))
	}
	for id, tr := range got {
		if !want[id] {
			diffs = append(diffs, fmt.Sprintf("fragment %s rooted at %s %s (%d spans)", id, tr.RootService, tr.RootOperation, len(tr.Spans)))
			continue
		}
		if err := set.CheckTrace(&tr); err != nil {
			diffs = append(diffs, err.Error())
		}
	}
	for id := range want {
		if _, ok := got[id]; !ok {
			diffs = append(diffs, "missing trace "+id)
		}
	}
	if len(diffs) > 5 {
		diffs = append(diffs[:5], fmt.Sprintf("... %d more", len(diffs)-5))
	}
	return strings.Join(diffs, "; ")
}
