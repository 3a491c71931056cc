package e2e

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/deeptrace/deeptrace/internal/netns"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/worker/assemble/assembletest"
)

const (
	window = 2 * time.Second
	shards = 4
)

// pipelineFlags are the scheduler's settings for a 2-second window.
// Later flags in extra override these.
func schedulerArgs(e *env, extra ...string) []string {
	args := []string{"scheduler", "--window", window.String(), "--lateness", "1500ms", "--margin", "1s", "--shards", strconv.Itoa(shards),
		"--schedule", "@every 1s", "--late-slack", "2s", "--initial-backfill", "20s", "--late-horizon", "10m", "--ops-listen="}
	args = append(append(args, e.esFlags("")...), e.redisFlags()...)
	return append(args, extra...)
}

func workerArgs(e *env, extra ...string) []string {
	args := []string{"worker", "--concurrency", "2", "--lock-ttl", "3s", "--shutdown-timeout", "5s", "--ops-listen="}
	args = append(args, extra...)
	return append(append(args, e.esFlags("")...), e.redisFlags()...)
}

// workload runs the two-host traffic (see traffic_test.go) and returns
// the recorder holding every host's spans and the expected trees.
func workload(t *testing.T, a, b *netns.Host, requests int) *recorder {
	rec := newRecorder()
	// Host A reaches the backend through a Service VIP, translated by its
	// own NAT as kube-proxy would.
	a.Run("iptables", "-t", "nat", "-A", "OUTPUT", "-d", strings.Split(vip, ":")[0]+"/32", "-p", "tcp", "--dport", "80",
		"-j", "DNAT", "--to-destination", b.IP+":8080")
	capA, err := a.Capture()
	if err != nil {
		t.Fatal(err)
	}
	defer capA.Close()
	capB, err := b.Capture()
	if err != nil {
		t.Fatal(err)
	}
	defer capB.Close()
	listen := func(h *netns.Host, port int) net.Listener {
		ln, err := h.Listen(fmt.Sprintf("%s:%d", h.IP, port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
	serve(t, listen(a, 6380), a.Name, "cache", capA, rec, func(r request, self *schemas.Span) error {
		time.Sleep(200 * time.Microsecond)
		return nil
	})
	backendLn := listen(b, 8080)
	cache := newPool(t, b, a.IP+":6380", 2, capB)
	serve(t, backendLn, b.Name, "backend", capB, rec, func(r request, self *schemas.Span) error {
		time.Sleep(r.work / 2)
		err := cache.do(func(e *endpoint) error { _, err := e.call("backend", "GET", r, self, rec); return err })
		time.Sleep(r.work / 2)
		return err
	})
	gwLn := listen(a, 8000)
	backend := newPool(t, a, vip, 2, capA)
	// The gateway's callers come over loopback, which no capture sees.
	serve(t, gwLn, a.Name, "gateway", nil, rec, func(r request, self *schemas.Span) error {
		return backend.do(func(e *endpoint) error { _, err := e.call("gateway", "GET", r, self, rec); return err })
	})

	// The load generator (not traced): three keep-alive connections, plus
	// requests timed to cross a window's end.
	lg := make(chan net.Conn, 3)
	for i := 0; i < 3; i++ {
		c, err := a.Dial(a.IP + ":8000")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		lg <- c
	}
	var wg sync.WaitGroup
	send := func(id int, work time.Duration) {
		defer wg.Done()
		c := <-lg
		defer func() { lg <- c }()
		fmt.Fprintf(c, "GET %d %d - -\n", id, work.Microseconds())
		buf := make([]byte, 256)
		if _, err := c.Read(buf); err != nil {
			t.Errorf("loadgen %d: %v", id, err)
		}
	}
	begin := time.Now()
	crossers := 0
	for i := 0; i < requests; i++ {
		at := begin.Add(time.Duration(i) * 110 * time.Millisecond)
		time.Sleep(time.Until(at))
		wg.Add(1)
		go send(i, time.Duration(1+i%5)*time.Millisecond)
		// Just before a window's end: a trace whose backend part lands in
		// the next window.
		next := at.Truncate(window).Add(window)
		if next.Sub(at) < 110*time.Millisecond && next.Sub(at) > 15*time.Millisecond {
			crossers++
			wg.Add(1)
			go func(id int) {
				time.Sleep(time.Until(next.Add(-8 * time.Millisecond)))
				send(id, 30*time.Millisecond)
			}(1000 + i)
		}
	}
	wg.Wait()
	time.Sleep(100 * time.Millisecond) // the last server spans are recorded after their response
	t.Logf("workload: %d requests (%d timed across a window's end), %d spans on %s, %d on %s",
		requests+crossers, crossers, len(rec.spans[a.Name]), a.Name, len(rec.spans[b.Name]), b.Name)
	if want := 5 * (requests + crossers); len(rec.set.Spans) != want {
		t.Fatalf("recorded %d spans, want %d", len(rec.set.Spans), want)
	}
	return rec
}

// Two hosts in network namespaces, the backend behind a DNAT'ed Service
// VIP; each host's spans pushed by its own exporter inside its namespace
// (host B's only after the windows were assembled, as a slow agent or a
// spool replay would); the scheduler and three worker processes: every
// trace ends up stored exactly once with the right tree, and the fragments
// the first assembly wrote without host B are gone.
func TestPipelineAcrossHosts(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := netns.New(t, "hosta", "hostb")
	a, b := n.Hosts[0], n.Hosts[1]
	start(t, "scheduler", exec.Command(bin, schedulerArgs(e)...))
	for i := 0; i < 3; i++ {
		start(t, fmt.Sprintf("worker %d", i), exec.Command(bin, workerArgs(e)...))
	}

	rec := workload(t, a, b, 45)
	set := rec.set
	var first, last int64
	for _, s := range set.Spans {
		if first == 0 || s.StartNs < first {
			first = s.StartNs
		}
		last = max(last, s.EndNs)
	}
	from, to := time.Unix(0, first).UTC(), time.Unix(0, last).UTC()

	dir := t.TempDir()
	esProxy := "http://" + n.Proxy(strings.TrimPrefix(testenv.ESURL(), "http://"))
	export := func(h *netns.Host) {
		file := filepath.Join(dir, h.Name+".jsonl")
		cnt := rec.writeFile(t, h.Name, file)
		args := append([]string{"export-spans", "--file", file, "--host", h.Name, "--spool-dir", filepath.Join(dir, "spool-"+h.Name)}, e.esFlags(esProxy)...)
		p := start(t, "export "+h.Name, h.Command(bin, args...))
		if err := p.wait(t, 60*time.Second); err != nil {
			t.Fatalf("export-spans on %s: %v\n%s", h.Name, err, p.Output())
		}
		t.Logf("%s exported %d spans from inside its namespace", h.Name, cnt)
	}
	export(a)
	// Host A's spans are searchable a refresh (1s) after its exporter
	// ended; the windows may have been assembled before that (then the
	// late-span check re-opens them).
	visible := time.Now().Add(time.Second)

	// Wait until every window of the traffic was assembled with host A's
	// spans but without host B's.
	st := jobs.NewState(e.rdb)
	ctx := context.Background()
	waitFor(t, 60*time.Second, "the traffic's windows assembled after host A's export", func() bool {
		for ws := from.Truncate(window); ws.Before(to); ws = ws.Add(window) {
			done, err := st.Assembled(ctx, ws, shards)
			if err != nil || len(done) < shards {
				return false
			}
			for _, at := range done {
				if at.Before(visible) {
					return false
				}
			}
		}
		return true
	})
	before, _ := traces(t, e.es, from.Add(-time.Minute), to.Add(time.Minute))
	fragments := 0
	for _, tr := range before {
		if tr.RootService == "cache" {
			fragments++
		}
	}
	t.Logf("assembled without host B: %d traces, %d of them cache fragments", len(before), fragments)
	if fragments == 0 {
		t.Fatal("expected fragments rooted at the cache while host B's spans were missing")
	}

	export(b)
	var diff string
	deadline := time.Now().Add(90 * time.Second)
	for {
		got, docs := traces(t, e.es, from.Add(-time.Minute), to.Add(time.Minute))
		if diff = exactly(set, got, docs); diff == "" {
			// Link kinds: the DNAT'ed hop joined on TCP positions, the
			// direct one on the tuple, calls to their handlers locally.
			kinds := map[string]map[string]int{}
			for _, tr := range got {
				for _, s := range tr.Spans {
					k := string(s.Role) + " " + s.Service
					if kinds[k] == nil {
						kinds[k] = map[string]int{}
					}
					kinds[k][s.LinkKind]++
				}
			}
			t.Logf("%d traces stored exactly once; link kinds %v", len(got), kinds)
			if kinds["server backend"][schemas.LinkTCPSeq] != len(set.Roots) || kinds["server cache"][schemas.LinkTuple] != len(set.Roots) ||
				kinds["client gateway"][schemas.LinkLocal] != len(set.Roots) {
				t.Fatalf("link kinds %v", kinds)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after host B's spans arrived the traces are not exactly the expected ones: %s", diff)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// testWindow writes synthetic spans for one old window and returns them.
func testWindow(t *testing.T, e *env, traces int) (*assembletest.Set, time.Time) {
	ws := time.Now().UTC().Add(-2 * time.Hour).Truncate(window)
	set := assembletest.Generate(assembletest.Config{Traces: traces, Start: ws.Add(100 * time.Millisecond), Spacing: (window - 300*time.Millisecond) / time.Duration(traces), Seed: 9})
	writeSpans(t, e, set)
	return set, ws
}

func writeSpans(t *testing.T, e *env, set *assembletest.Set) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "spans.jsonl")
	r := newRecorder()
	for _, s := range set.Spans {
		r.spans["x"] = append(r.spans["x"], s)
	}
	r.writeFile(t, "x", f)
	p := start(t, "export", exec.Command(bin, append([]string{"export-spans", "--file", f, "--spool-dir", filepath.Join(t.TempDir(), "spool"), "--ops-listen="}, e.esFlags("")...)...))
	if err := p.wait(t, 60*time.Second); err != nil {
		t.Fatalf("export-spans: %v\n%s", err, p.Output())
	}
	e.es.Refresh(context.Background(), e.es.Indices().Pattern(schemas.KindSpans))
}

func enqueue(t *testing.T, e *env, ws time.Time, shards int) {
	t.Helper()
	c := asynq.NewClientFromRedisClient(e.rdb)
	for sh := 0; sh < shards; sh++ {
		task, err := jobs.NewAssembleTask(jobs.AssemblePayload{WindowStart: ws, WindowEnd: ws.Add(window), Shard: sh, Shards: shards, Margin: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Enqueue(task); err != nil {
			t.Fatal(err)
		}
	}
}

func waitAssembled(t *testing.T, e *env, ws time.Time, shards int, d time.Duration) {
	t.Helper()
	st := jobs.NewState(e.rdb)
	waitFor(t, d, "every shard of the window assembled", func() bool {
		done, err := st.Assembled(context.Background(), ws, shards)
		return err == nil && len(done) == shards
	})
}

// A worker killed with SIGKILL in the middle of writing a window's traces:
// asynq hands the task to another worker once the dead one's lease has
// expired (asynq's lease is 30s and its recoverer waits 30s more, so this
// test takes about a minute), and the window ends up assembled exactly
// once: the rerun overwrites what the dead run had written.
func TestWorkerKilledMidTask(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	set, ws := testWindow(t, e, 400)
	cmd := exec.Command(bin, workerArgs(e, "--concurrency", "1")...)
	cmd.Env = childEnv("DEEPTRACE_WORKER_TEST_DELAY=10m")
	w1 := start(t, "worker 1 (killed)", cmd)
	enqueue(t, e, ws, shards)
	waitFor(t, 60*time.Second, "worker 1 in the middle of writing", func() bool { return strings.Contains(w1.Output(), "test delay mid-write") })
	half, _ := traces(t, e.es, ws.Add(-time.Minute), ws.Add(time.Minute))
	if err := w1.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-w1.done
	killed := time.Now()
	t.Logf("worker 1 killed with %d of %d traces written", len(half), len(set.Roots))
	start(t, "worker 2", exec.Command(bin, workerArgs(e)...))
	waitAssembled(t, e, ws, shards, 150*time.Second)
	got, docs := traces(t, e.es, ws.Add(-time.Minute), ws.Add(time.Minute))
	if d := exactly(set, got, docs); d != "" {
		t.Fatal(d)
	}
	t.Logf("window assembled exactly once (%d traces) %s after the kill", len(got), time.Since(killed).Round(time.Second))
}

// SIGTERM to a worker in the middle of a task: it stops within its
// shutdown timeout and hands the task back to the queue, where another
// worker finishes it; the window is assembled exactly once.
func TestWorkerStopReturnsTask(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	set, ws := testWindow(t, e, 300)
	cmd := exec.Command(bin, workerArgs(e, "--concurrency", "1", "--shutdown-timeout", "2s")...)
	cmd.Env = childEnv("DEEPTRACE_WORKER_TEST_DELAY=10m")
	w1 := start(t, "worker 1 (stopped)", cmd)
	enqueue(t, e, ws, 1)
	waitFor(t, 60*time.Second, "worker 1 in the middle of writing", func() bool { return strings.Contains(w1.Output(), "test delay mid-write") })
	stopped := time.Now()
	if err := w1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := w1.wait(t, 20*time.Second); err != nil {
		t.Fatalf("worker 1 exit: %v", err)
	}
	t.Logf("worker 1 stopped %s after SIGTERM", time.Since(stopped).Round(time.Millisecond))
	start(t, "worker 2", exec.Command(bin, workerArgs(e)...))
	waitAssembled(t, e, ws, 1, 60*time.Second)
	got, docs := traces(t, e.es, ws.Add(-time.Minute), ws.Add(time.Minute))
	if d := exactly(set, got, docs); d != "" {
		t.Fatal(d)
	}
	t.Logf("window assembled exactly once (%d traces) %s after the stop", len(got), time.Since(stopped).Round(time.Millisecond))
}
