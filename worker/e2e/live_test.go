package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/netns"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// buildService builds testdata/httpsvc once per name, so the agent sees
// the service's name as the process name.
func buildService(t *testing.T, names ...string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "httpsvc")
	_, file, _, _ := runtime.Caller(0)
	build := exec.Command("go", "build", "-o", src, "./testdata/httpsvc")
	build.Dir = filepath.Dir(file)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build httpsvc: %v\n%s", err, out)
	}
	body, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, n := range names {
		out[n] = filepath.Join(dir, n)
		if err := os.WriteFile(out[n], body, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// liveHop is one span a request makes, in the order of its trace's chain.
type liveHop struct {
	service string
	role    schemas.Role
	link    string // how assembly joins it to the hop before
}

// liveChain is every request's trace: gateway (host A) calls the backend
// (host B) through a DNAT'ed Service address, the backend calls Redis
// back on host A.
var liveChain = []liveHop{
	{"gateway", schemas.RoleServer, ""},
	{"gateway", schemas.RoleClient, schemas.LinkLocal},
	{"backend", schemas.RoleServer, schemas.LinkTCPSeq},
	{"backend", schemas.RoleClient, schemas.LinkLocal},
	{"redis-server", schemas.RoleServer, schemas.LinkTuple},
}

// requestID is the request a span served: /r/{id} in HTTP paths, k{id}
// in the Redis key.
func requestID(s *schemas.Span) string {
	if s.Protocol == schemas.ProtocolRedis {
		f := strings.Fields(s.Tags["db.statement"])
		if len(f) == 2 && strings.HasPrefix(f[1], "k") {
			return f[1][1:]
		}
		return ""
	}
	return strings.TrimPrefix(s.Path, "/r/")
}

// checkLive compares the stored traces with the requests made: one trace
// per request, holding exactly the chain's five spans of that request,
// each under the one before it.
func checkLive(got map[string]schemas.Trace, docs int, ids []string) string {
	var diffs []string
	if docs != len(got) {
		diffs = append(diffs, fmt.Sprintf("%d documents for %d trace ids", docs, len(got)))
	}
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	seen := map[string]int{}
	for _, tr := range got {
		var root *schemas.TraceSpan
		byID := map[string]*schemas.TraceSpan{}
		for i := range tr.Spans {
			byID[tr.Spans[i].SpanID] = &tr.Spans[i]
			if tr.Spans[i].SpanID == tr.RootSpanID {
				root = &tr.Spans[i]
			}
		}
		if root == nil || root.Service != "gateway" || root.Role != schemas.RoleServer {
			diffs = append(diffs, fmt.Sprintf("fragment %s rooted at %s %s (%d spans)", tr.TraceID, tr.RootService, tr.RootOperation, len(tr.Spans)))
			continue
		}
		id := requestID(&root.Span)
		seen[id]++
		if !want[id] {
			diffs = append(diffs, fmt.Sprintf("trace %s for request %q, which was not made", tr.TraceID, id))
			continue
		}
		if len(tr.Spans) != len(liveChain) {
			diffs = append(diffs, fmt.Sprintf("request %s: %d spans, want %d", id, len(tr.Spans), len(liveChain)))
			continue
		}
		// Walk down the chain: each hop is the only child of the one before.
		children := map[string][]*schemas.TraceSpan{}
		for i := range tr.Spans {
			s := &tr.Spans[i]
			children[s.TraceParentID] = append(children[s.TraceParentID], s)
		}
		cur := root
		for k, hop := range liveChain {
			if k > 0 {
				kids := children[cur.SpanID]
				if len(kids) != 1 {
					diffs = append(diffs, fmt.Sprintf("request %s: %s %s has %d children", id, cur.Service, cur.Role, len(kids)))
					break
				}
				cur = kids[0]
			}
			if cur.Service != hop.service || cur.Role != hop.role || cur.LinkKind != hop.link || requestID(&cur.Span) != id {
				diffs = append(diffs, fmt.Sprintf("request %s hop %d: %s %s %q linked %q, want %s %s of the same request linked %q",
					id, k, cur.Service, cur.Role, cur.Operation, cur.LinkKind, hop.service, hop.role, hop.link))
				break
			}
		}
	}
	for _, id := range ids {
		switch seen[id] {
		case 1:
		case 0:
			diffs = append(diffs, "no trace for request "+id)
		default:
			diffs = append(diffs, fmt.Sprintf("request %s traced %d times", id, seen[id]))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 6 {
		diffs = append(diffs[:6], fmt.Sprintf("... %d more", len(diffs)-6))
	}
	return strings.Join(diffs, "; ")
}

// The whole pipeline live: two hosts in network namespaces, each with its
// own deeptrace agent limited to its namespace (both are given the same
// process names, so a namespace filter that leaked would trace a request
// twice); real services in separate processes (Go HTTP services and
// Debian's redis-server), the backend reached through a DNAT'ed Service
// address; the scheduler and three worker processes. Every request made
// ends up as exactly one trace with the right five spans, and nothing else
// is stored; the scheduler, waiting for the agents' progress reports
// rather than a fixed lateness, assembles each window once, complete.
func TestLiveAgentsAcrossHosts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("live agents need root to load eBPF (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)")
	}
	redisServer, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed (scripts/engines.sh installs it)")
	}
	t.Parallel()
	e := newEnv(t)
	n := netns.New(t, "livea", "liveb")
	a, b := n.Hosts[0], n.Hosts[1]
	bins := buildService(t, "gateway", "backend")
	a.Run("iptables", "-t", "nat", "-A", "OUTPUT", "-d", strings.Split(vip, ":")[0]+"/32", "-p", "tcp", "--dport", "80",
		"-j", "DNAT", "--to-destination", b.IP+":8080")

	esProxy := "http://" + n.Proxy(strings.TrimPrefix(testenv.ESURL(), "http://"))
	dir := t.TempDir()
	agent := func(h *netns.Host) *proc {
		args := append([]string{"agent", "--netns", h.Name, "--comm", "gateway,backend,redis-server", "--host", h.Name,
			"--spool-dir", filepath.Join(dir, "spool-"+h.Name), "--ops-listen=", "--log-format", "text"}, e.esFlags(esProxy)...)
		p := start(t, "agent "+h.Name, h.Command(bin, args...))
		waitFor(t, 30*time.Second, "agent on "+h.Name+" attached", func() bool {
			select {
			case <-p.done:
				out := p.Output()
				if strings.Contains(out, "operation not permitted") || strings.Contains(out, "unavailable") {
					t.Skipf("the agent could not load eBPF here: %s", tail(out, 3))
				}
				t.Fatalf("agent on %s exited: %v\n%s", h.Name, p.err, tail(out, 20))
			default:
			}
			return strings.Contains(p.Output(), "capture attached")
		})
		return p
	}
	agent(a)
	agent(b)

	start(t, "redis-server", a.Command(redisServer, "--bind", a.IP, "--port", "6380", "--protected-mode", "no", "--save", "", "--appendonly", "no"))
	start(t, "backend", b.Command(bins["backend"], "--listen", b.IP+":8080", "--redis", a.IP+":6380"))
	start(t, "gateway", a.Command(bins["gateway"], "--listen", a.IP+":8000", "--call", "http://"+vip))
	// Windows wait for the agents' progress reports, at most 30s.
	sched := start(t, "scheduler", exec.Command(bin, schedulerArgs(e, "--lateness", "30s")...))
	for i := 0; i < 3; i++ {
		start(t, fmt.Sprintf("worker %d", i), exec.Command(bin, workerArgs(e)...))
	}

	// The load generator is the test process (not traced): keep-alive
	// connections into host A, a few requests timed across a window's end.
	lg := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: 4,
		DialContext:         func(context.Context, string, string) (net.Conn, error) { return a.Dial(a.IP + ":8000") },
	}}
	waitFor(t, 20*time.Second, "the gateway serving", func() bool {
		res, err := lg.Get(fmt.Sprintf("http://%s:8000/r/warmup", a.IP))
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == 200
	})
	warmup := time.Now()
	time.Sleep(window) // the warm-up request's window is left out of the check

	var mu sync.Mutex
	var ids []string
	var wg sync.WaitGroup
	send := func(id string, work int) {
		defer wg.Done()
		res, err := lg.Get(fmt.Sprintf("http://%s:8000/r/%s?work=%d", a.IP, id, work))
		if err != nil {
			t.Errorf("request %s: %v", id, err)
			return
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || strings.TrimSpace(string(body)) != "ok "+id {
			t.Errorf("request %s: %d %q", id, res.StatusCode, body)
			return
		}
		mu.Lock()
		ids = append(ids, id)
		mu.Unlock()
	}
	begin := time.Now()
	const requests = 60
	const spacing = 100 * time.Millisecond
	// One request per window's end, starting just before it, so its
	// backend part lands in the next window. Requests do not overlap in
	// time: this test is about capture, export and assembly across hosts,
	// and a Go http.Client writes its requests from a goroutine of its
	// own, so which of two concurrent requests a call serves is a guess
	// of local correlation, whose accuracy is measured apart
	// (./task accuracy, docs/correlation.md).
	crossers := 0
	var crossAt []time.Time
	for next := begin.Truncate(window).Add(window); next.Before(begin.Add(requests * spacing)); next = next.Add(window) {
		crossers++
		at := next.Add(-10 * time.Millisecond)
		crossAt = append(crossAt, at)
		wg.Add(1)
		go func(id string) {
			time.Sleep(time.Until(at))
			send(id, 30)
		}(fmt.Sprintf("x%d", crossers))
	}
	for i := 0; i < requests; i++ {
		at := begin.Add(time.Duration(i) * spacing)
		clash := false
		for _, c := range crossAt {
			clash = clash || (at.After(c.Add(-60*time.Millisecond)) && at.Before(c.Add(80*time.Millisecond)))
		}
		if clash {
			continue
		}
		time.Sleep(time.Until(at))
		wg.Add(1)
		go send(fmt.Sprint(i), 1+i%4)
	}
	wg.Wait()
	end := time.Now()
	t.Logf("%d requests made (%d timed across a window's end)", len(ids), crossers)
	if t.Failed() {
		return
	}

	// Everything from the first request's window on; the warm-up before.
	from := warmup.Add(window).Truncate(window)
	var diff string
	deadline := time.Now().Add(120 * time.Second)
	for {
		got, docs := traces(t, e.es, from, end.Add(time.Minute))
		if diff = checkLive(got, docs, ids); diff == "" {
			t.Logf("%d traces stored exactly once, each with its request's five spans, %s after the last request",
				len(got), time.Since(end).Round(100*time.Millisecond))
			// The agents' watermarks made the first assembly of every
			// window the right one: none was re-opened for late spans.
			if out := sched.Output(); strings.Contains(out, "spans arrived after their window was assembled") {
				t.Fatalf("a window was assembled before its spans were stored:\n%s", tail(out, 20))
			}
			break
		}
		if time.Now().After(deadline) {
			logSpans(t, e, from, end)
			t.Fatalf("the stored traces are not one per request: %s", diff)
		}
		time.Sleep(time.Second)
	}
}

// logSpans logs the stored spans by service and role, and those of one
// request, to tell a capture gap from an assembly fault.
func logSpans(t *testing.T, e *env, from, to time.Time) {
	spans, err := e.es.Spans(context.Background(), store.Query{From: from.Add(-time.Minute), To: to.Add(time.Minute), PageSize: 5000})
	if err != nil {
		t.Logf("read spans: %v", err)
		return
	}
	count := map[string]int{}
	for _, s := range spans {
		count[s.Service+" "+string(s.Role)]++
		if id := requestID(&s); id == "10" || id == "11" {
			t.Logf("request %s: %s %s %s %q parent=%s conn=%+v seq=%d reqtcp=%d host=%s", id, s.SpanID, s.Service, s.Role, s.Operation, s.ParentSpanID, s.Conn, s.Seq, s.ReqTCPSeq, s.Host)
		}
	}
	t.Logf("%d spans stored: %v", len(spans), count)
}
