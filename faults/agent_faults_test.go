package faults

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// The agent rows run the real `deeptrace agent` (eBPF, root) on a traced
// HTTP server: capture's testpeer, a Go program built with DWARF.

var (
	peerOnce sync.Once
	peerBin  string
	peerErr  error
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the agent loads eBPF: run as root")
	}
}

// startHTTPPeer runs testpeer's HTTP server (answers -size bytes) and
// returns its base URL and pid.
func startHTTPPeer(t *testing.T, args ...string) (string, int) {
	t.Helper()
	peerOnce.Do(func() {
		peerBin = filepath.Join(filepath.Dir(bin), "testpeer")
		cmd := exec.Command("go", "build", "-o", peerBin, "./agent/capture/internal/testpeer")
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			peerErr = fmt.Errorf("go build testpeer: %v\n%s", err, out)
		}
	})
	if peerErr != nil {
		t.Fatal(peerErr)
	}
	cmd := exec.Command(peerBin, append([]string{"http", "-listen", "127.0.0.1:0"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ADDR ") {
		t.Fatalf("testpeer: %q %v", line, err)
	}
	return "http://" + strings.TrimSpace(strings.TrimPrefix(line, "ADDR ")), cmd.Process.Pid
}

// agentProc is a running `deeptrace agent`.
type agentProc struct {
	cmd      *exec.Cmd
	log      *syncLog
	ops      string
	exited   chan error
	attached time.Time // when the test saw "capture attached"
}

// startAgent runs the agent with args on the suite's engines and waits
// until it says capture is attached.
func startAgent(t *testing.T, st *store.Store, args ...string) *agentProc {
	t.Helper()
	a := &agentProc{log: &syncLog{}, ops: freeAddr(t), exited: make(chan error, 1)}
	a.cmd = exec.Command(bin, append([]string{"agent", "--es-url", engines.ESURL(), "--es-prefix", st.Indices().Prefix,
		"--ops-listen", a.ops}, args...)...)
	a.cmd.Env = append(os.Environ(), "DEEPTRACE_CONFIG=")
	a.cmd.Stdout, a.cmd.Stderr = a.log, a.log
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.exited <- a.cmd.Wait() }()
	t.Cleanup(func() { a.cmd.Process.Kill() })
	for !strings.Contains(a.log.String(), "capture attached") {
		select {
		case err := <-a.exited:
			a.exited <- err
			t.Fatalf("agent exited before capture was attached: %v\n%s", err, a.log.tail(30))
		case <-time.After(10 * time.Millisecond):
		}
	}
	a.attached = time.Now()
	return a
}

// stop sends SIGTERM and waits for a clean exit (the exporter flushes).
func (a *agentProc) stop(t *testing.T) {
	t.Helper()
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-a.exited:
		a.exited <- err
		if err != nil {
			t.Fatalf("agent after SIGTERM: %v\n%s", err, a.log.tail(30))
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("agent still running 40s after SIGTERM\n%s", a.log.tail(30))
	}
}

// kill sends SIGKILL, as the OOM killer does, and waits until the process
// is gone: nothing it held in memory is written.
func (a *agentProc) kill(t *testing.T) {
	t.Helper()
	a.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case err := <-a.exited:
		a.exited <- err
	case <-time.After(10 * time.Second):
		t.Fatalf("agent still running 10s after SIGKILL")
	}
}

// metric sums the samples of a counter or gauge on the agent's /metrics.
func (a *agentProc) metric(t *testing.T, name string) float64 {
	t.Helper()
	return a.metrics(t)(name)
}

// metrics scrapes the agent's /metrics once and returns a lookup that sums
// the samples of a name, so figures that belong together are read at the
// same moment.
func (a *agentProc) metrics(t *testing.T) func(name string) float64 {
	t.Helper()
	res, err := http.Get("http://" + a.ops + "/metrics")
	if err != nil {
		t.Fatalf("agent metrics: %v", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return func(name string) float64 {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? ([0-9.e+]+)$`)
		sum := 0.0
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			v, _ := strconv.ParseFloat(m[2], 64)
			sum += v
		}
		return sum
	}
}

// logLine decodes the agent's last JSON log line whose message is msg
// into v; false when it logged none.
func (a *agentProc) logLine(msg string, v any) bool {
	key := `"msg":` + strconv.Quote(msg)
	lines := strings.Split(a.log.String(), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], key) {
			return json.Unmarshal([]byte(lines[i]), v) == nil
		}
	}
	return false
}

// storedSpans counts the spans of role the engine holds per path (under
// prefix), and the span documents and distinct ids among them.
func storedSpans(t *testing.T, st *store.Store, from, to time.Time, prefix string, role schemas.Role) (perPath map[string]int, docs, ids int) {
	t.Helper()
	ctx := context.Background()
	if err := st.Refresh(ctx, st.Indices().Pattern(schemas.KindSpans)); err != nil {
		t.Fatal(err)
	}
	got, err := st.Spans(ctx, store.Query{From: from, To: to, PageSize: 5000})
	if err != nil {
		t.Fatal(err)
	}
	perPath = map[string]int{}
	seen := map[string]bool{}
	for _, sp := range got {
		if sp.Role != role || !strings.HasPrefix(sp.Path, prefix) {
			continue
		}
		perPath[sp.Path]++
		docs++
		seen[sp.SpanID] = true
	}
	return perPath, docs, len(seen)
}

// request is one request of the steady traffic and when it ran.
type request struct {
	path       string
	start, end time.Time
	err        error
}

// traffic is a steady stream of requests to the traced server, one at a
// time, each on a new connection, with a path of its own.
type traffic struct {
	reqs     []request // the stream's goroutine's until done is closed
	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// startTraffic sends GET base+prefix+N, N counting up, 5ms apart, until
// Stop.
func startTraffic(base, prefix string) *traffic {
	tr := &traffic{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(tr.done)
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		for i := 0; ; i++ {
			select {
			case <-tr.stop:
				return
			default:
			}
			r := request{path: prefix + strconv.Itoa(i), start: time.Now()}
			res, err := client.Get(base + r.path)
			if err == nil {
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
			r.end, r.err = time.Now(), err
			tr.reqs = append(tr.reqs, r)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return tr
}

// Stop ends the stream and returns every request made. It may be called
// again (a test's cleanup after a failure).
func (tr *traffic) Stop() []request {
	tr.stopOnce.Do(func() { close(tr.stop) })
	<-tr.done
	return tr.reqs
}

// rate is the requests per second of reqs.
func rate(reqs []request) float64 {
	if len(reqs) == 0 {
		return 0
	}
	return float64(len(reqs)) / reqs[len(reqs)-1].end.Sub(reqs[0].start).Seconds()
}

// attachment is a stretch of time during which one agent was attached,
// from its "capture attached" to the signal that ended it.
type attachment struct{ from, to time.Time }

// attachedTally is what became of the requests made entirely within one
// attachment.
type attachedTally struct {
	expected, lost int
	// lostAge is how long before the attachment's end the earliest lost
	// request ended: how far back what the agent lost reaches.
	lostAge   time.Duration
	lostPaths []string // the first 10
}

// requestTally is what became of a stream's requests, against the
// attachments of the agents that traced it.
type requestTally struct {
	attached []attachedTally // one per attachment
	// inGap were made (at least in part) while no agent was attached;
	// gapCaught of them were stored all the same (an agent draining).
	inGap, gapCaught int
	failed           int
}

// tallyRequests sorts reqs by the attachment they were made in and
// counts, from stored (spans per path), those that did not reach the
// engine.
func tallyRequests(reqs []request, stored map[string]int, agents []attachment) requestTally {
	tl := requestTally{attached: make([]attachedTally, len(agents))}
	for _, r := range reqs {
		if r.err != nil {
			tl.failed++
			continue
		}
		in := -1
		for i, a := range agents {
			if !r.start.Before(a.from) && r.end.Before(a.to) {
				in = i
				break
			}
		}
		if in < 0 {
			tl.inGap++
			if stored[r.path] > 0 {
				tl.gapCaught++
			}
			continue
		}
		at := &tl.attached[in]
		at.expected++
		if stored[r.path] == 0 {
			at.lost++
			at.lostAge = max(at.lostAge, agents[in].to.Sub(r.end))
			if len(at.lostPaths) < 10 {
				at.lostPaths = append(at.lostPaths, r.path)
			}
		}
	}
	return tl
}

// dupPaths counts the spans beyond the first stored for one path.
func dupPaths(stored map[string]int) int {
	dup := 0
	for _, n := range stored {
		dup += max(0, n-1)
	}
	return dup
}

// TestAgentRestartUnderTraffic restarts the agent (SIGTERM, as a rolling
// update does, then a new process) while a client sends a steady stream
// of requests to the traced server, each on a new connection. Requests
// made entirely while an agent was attached must all be in the engine,
// once: the pipeline loses nothing. Requests made while no agent ran
// (from the SIGTERM until the new agent is attached) cannot be captured
// by anything: they are counted apart, with those the old agent still
// caught while draining.
func TestAgentRestartUnderTraffic(t *testing.T) {
	gated(t)
	needRoot(t)
	row := &Row{Fault: "agent restarted (SIGTERM, new process) while traffic flows"}
	record(t, row)
	st := testenv.Store(t)
	base, pid := startHTTPPeer(t, "-size", "64")
	args := []string{"--pid", strconv.Itoa(pid), "--host", "faults-agent", "--spool-dir", t.TempDir()}
	a1 := startAgent(t, st, args...)
	from := time.Now().UTC().Add(-time.Minute)

	tr := startTraffic(base, "/restart/")
	time.Sleep(4 * time.Second)
	term := time.Now()
	a1.stop(t)
	a2 := startAgent(t, st, args...)
	gap := a2.attached.Sub(term)
	time.Sleep(4 * time.Second)
	reqs := tr.Stop()
	end := time.Now()
	a2.stop(t)

	perPath, docs, ids := storedSpans(t, st, from, time.Now().UTC().Add(time.Minute), "/restart/", schemas.RoleServer)
	tl := tallyRequests(reqs, perPath, []attachment{{a1.attached, term}, {a2.attached, end}})
	expected := tl.attached[0].expected + tl.attached[1].expected
	lost := tl.attached[0].lost + tl.attached[1].lost
	dup := dupPaths(perPath)
	row.Checked = fmt.Sprintf("%d requests at about %.0f/s, each on a new connection, to a traced Go HTTP server; every request made while an agent was attached is stored once; "+
		"%d made while no agent ran (SIGTERM to the new agent attached) are reported apart, %d of them still caught by the draining agent",
		len(reqs), rate(reqs), tl.inGap, tl.gapCaught)
	row.Lost = fmt.Sprintf("%d of %d by the pipeline; %d not capturable (no agent running)", lost, expected, tl.inGap-tl.gapCaught)
	row.DupMissing = fmt.Sprintf("%d dup spans (%d docs, %d ids)", dup+docs-ids, docs, ids)
	row.Recovery = gap
	if tl.failed > 0 {
		t.Errorf("%d requests to the traced server failed", tl.failed)
	}
	if lost > 0 || dup > 0 || docs != ids {
		t.Errorf("%s; %s; lost e.g. %v %v\nagent 1:\n%s\nagent 2:\n%s", row.Lost, row.DupMissing, tl.attached[0].lostPaths, tl.attached[1].lostPaths, a1.log.tail(20), a2.log.tail(20))
	}
	if expected < 200 {
		t.Errorf("only %d requests while an agent was attached: too few to tell", expected)
	}
}

// loadResult is one load run against the traced server.
type loadResult struct {
	requests, errors int
	rps              float64
	p50, p99         time.Duration
}

func (l loadResult) String() string {
	return fmt.Sprintf("%.0f req/s, p50 %s, p99 %s, %d errors", l.rps, l.p50.Round(10*time.Microsecond), l.p99.Round(10*time.Microsecond), l.errors)
}

// load runs c keep-alive clients against url for d, as fast as they can
// when every is 0, else each starting one request every (open loop: a
// late request does not push the next one back).
func load(url string, c int, d, every time.Duration) loadResult {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: c, MaxConnsPerHost: c}}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	var res loadResult
	var wg sync.WaitGroup
	start := time.Now()
	for range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			next := time.Now()
			for ctx.Err() == nil {
				if every > 0 {
					time.Sleep(time.Until(next))
					next = next.Add(every)
				}
				t0 := time.Now()
				r, err := client.Get(url)
				ok := err == nil && r.StatusCode == http.StatusOK
				if err == nil {
					io.Copy(io.Discard, r.Body)
					r.Body.Close()
				}
				mu.Lock()
				if ok {
					lat = append(lat, time.Since(t0))
				} else if ctx.Err() == nil {
					res.errors++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	res.requests = len(lat)
	if len(lat) > 0 {
		res.rps = float64(len(lat)) / el.Seconds()
		res.p50, res.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return res
}

// TestSpanFloodBeyondRingBuffer floods the agent: a traced HTTP server
// answers 256 KiB per request to 8 keep-alive clients, the agent copies
// up to 1 MiB per call into a 1 MiB ring buffer, far more than its reader
// drains. The kernel side must drop what does not fit and count it
// (deeptrace_capture_dropped_total) instead of blocking the application:
// no request may fail, and at a fixed offered rate the server must keep
// serving it (95%) with the flooded agent. Flat out, the agent's reader
// and the capture copies share the machine's CPUs with the server, so
// throughput drops; the row reports by how much, against runs without an
// agent before and after (bound DEEPTRACE_FAULTS_FLOOD_MIN, 30%: measured
// 41-47% on 2 CPUs). The agent must stay healthy and exit cleanly.
func TestSpanFloodBeyondRingBuffer(t *testing.T) {
	gated(t)
	needRoot(t)
	row := &Row{Fault: "span flood beyond the ring buffer (1 MiB ring, 256 KiB responses, 8 clients)"}
	record(t, row)
	st := testenv.Store(t)
	base, pid := startHTTPPeer(t, "-size", strconv.Itoa(256<<10))
	const clients, d = 8, 6 * time.Second
	url := base + "/flood"
	// Two loads: as fast as the clients go (the machine's two CPUs are
	// then shared by the server, the clients and the agent's reader), and
	// a fixed offered rate of 8 × 100 req/s (about 200 MB/s of payload),
	// where the question is whether the server keeps up and how its
	// latency moves.
	const paced = 10 * time.Millisecond
	load(url, clients, time.Second, 0) // warm up
	before := load(url, clients, d, 0)
	beforePaced := load(url, clients, d, paced)
	a := startAgent(t, st, "--pid", strconv.Itoa(pid), "--host", "faults-flood", "--spool-dir", t.TempDir(),
		"--ring-mib", "1", "--chunk-bytes", "16384", "--max-call-bytes", strconv.Itoa(1<<20))
	from := time.Now().UTC().Add(-time.Minute)
	time.Sleep(500 * time.Millisecond)
	flooded := load(url, clients, d, 0)
	droppedFull := a.metric(t, "deeptrace_capture_dropped_total")
	floodedPaced := load(url, clients, d, paced)
	dropped := a.metric(t, "deeptrace_capture_dropped_total")
	events := a.metric(t, "deeptrace_capture_events_total")
	if res, err := http.Get("http://" + a.ops + "/healthz"); err != nil || res.StatusCode != http.StatusOK {
		t.Errorf("agent not healthy after the flood: %v", err)
	} else {
		res.Body.Close()
	}
	a.stop(t)
	after := load(url, clients, d, 0)
	afterPaced := load(url, clients, d, paced)
	perPath, _, _ := storedSpans(t, st, from, time.Now().UTC().Add(time.Minute), "/flood", schemas.RoleServer)
	baseline := (before.rps + after.rps) / 2
	ratio := flooded.rps / baseline
	minRatio := 0.3
	if v, err := strconv.ParseFloat(os.Getenv("DEEPTRACE_FAULTS_FLOOD_MIN"), 64); err == nil {
		minRatio = v
	}
	pacedBase := (beforePaced.rps + afterPaced.rps) / 2
	pacedRatio := floodedPaced.rps / pacedBase
	row.Checked = fmt.Sprintf("flat out, the traced server without an agent: %s (before), %s (after); with the flooded agent: %s = %.0f%% of the throughput "+
		"(bound %.0f%%, DEEPTRACE_FAULTS_FLOOD_MIN; the two CPUs are shared with the clients and the agent's reader). "+
		"At a fixed 800 req/s: without %s / %s, flooded %s (%.0f%% of the rate; %.0f records dropped in this part). "+
		"No request fails, drops are counted, the agent stays healthy and exits 0",
		before, after, flooded, 100*ratio, 100*minRatio, beforePaced, afterPaced, floodedPaced, 100*pacedRatio, dropped-droppedFull)
	row.Lost = fmt.Sprintf("%.0f ring records dropped and counted of %.0f written (%.0f%%); %d spans stored for %d requests",
		dropped, events+dropped, 100*dropped/max(1, events+dropped), perPath["/flood"], flooded.requests+floodedPaced.requests)
	row.DupMissing = "-"
	if n := before.errors + flooded.errors + after.errors + beforePaced.errors + floodedPaced.errors + afterPaced.errors; n > 0 {
		t.Errorf("%d requests failed", n)
	}
	if droppedFull == 0 || dropped == droppedFull {
		t.Errorf("nothing dropped in one of the runs: the flood did not exceed the ring buffer (dropped %.0f, then %.0f; %.0f events)", droppedFull, dropped, events)
	}
	if ratio < minRatio {
		t.Errorf("the flooded agent cut the traced server to %.0f%% of its throughput (bound %.0f%%)", 100*ratio, 100*minRatio)
	}
	if pacedRatio < 0.95 {
		t.Errorf("at a fixed rate the flooded agent's server served %.0f%% of the requests of a run without agent, want 95%% or more", 100*pacedRatio)
	}
	var stopped struct {
		Dropped uint64 `json:"dropped"`
	}
	if !a.logLine("capture stopped", &stopped) || stopped.Dropped == 0 {
		t.Errorf("the agent's capture stopped line counts no drops:\n%s", a.log.tail(10))
	}
}

// freeAddr is a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	p, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return "127.0.0.1:" + strconv.Itoa(p)
}
