// Package e2e drives the dashboard in headless Chromium (Debian's
// chromium, through chromedp) against the real API on the real engines,
// seeded with synthetic traces: log in, search, open a trace, see its
// waterfall and a span's details, the service map, and a reassembly whose
// progress reaches 100%. Screenshots land in web/e2e/artifacts/ (or
// $DEEPTRACE_ARTIFACTS).
package e2e

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/deeptrace/deeptrace/api/client/clienttest"
	"github.com/deeptrace/deeptrace/schemas"
)

// chromiumPath is Debian's Chromium (apt-get install chromium).
const chromiumPath = "/usr/bin/chromium"

func artifactsDir(t *testing.T) string {
	dir := os.Getenv("DEEPTRACE_ARTIFACTS")
	if dir == "" {
		dir = "artifacts"
	}
	dir, _ = filepath.Abs(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// browser is a headless Chromium with a fresh profile, one tab, and a
// record of every URL the page requested and every error it logged.
type browser struct {
	ctx      context.Context
	mu       sync.Mutex
	requests []string
	errors   []string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		msg := "browser test skipped: " + chromiumPath + " not found (" + err.Error() + "); install it with: apt-get install -y chromium"
		if os.Getenv("DEEPTRACE_REQUIRE_BROWSER") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if out, err := exec.Command(chromiumPath, "--version").CombinedOutput(); err != nil {
		t.Skipf("browser test skipped: %s --version failed: %v: %s", chromiumPath, err, out)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.Flag("lang", "en-US"),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 900),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	// The first call starts the browser and binds it to bctx, which has
	// no deadline; the steps run under one.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start %s: %v", chromiumPath, err)
	}
	ctx, cancelT := context.WithTimeout(bctx, 90*time.Second)
	t.Cleanup(cancelT)
	b := &browser{ctx: ctx}
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	requests := chromedp.Events(ctx, network.RequestWillBeSent)
	go func() {
		for ev, err := range requests {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.requests = append(b.requests, ev.Request.URL)
			b.mu.Unlock()
		}
	}()
	console := chromedp.Console(ctx)
	go func() {
		for m, err := range console {
			if err != nil {
				return
			}
			// Chromium logs the API's expected 401s (no session yet, a
			// wrong token) as failed resources; those are not the page's.
			if m.IsException() || (m.Type == chromedp.ConsoleError && m.Source != "network") {
				b.mu.Lock()
				b.errors = append(b.errors, m.String())
				b.mu.Unlock()
			}
		}
	}()
	return b
}

func (b *browser) do(t *testing.T, step string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(b.ctx, actions...); err != nil {
		t.Fatalf("%s: %v", step, err)
	}
}

// eval evaluates a JavaScript expression in the page (awaiting it when it
// is a promise) and decodes its value.
func eval[T any](t *testing.T, b *browser, js string) T {
	t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

func text(t *testing.T, b *browser, sel string) string {
	t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("text of %s: %v", sel, err)
	}
	return v
}

// shot saves a full-page PNG screenshot as an artifact.
func (b *browser) shot(t *testing.T, dir, name string) {
	t.Helper()
	buf, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	p := filepath.Join(dir, name+".png")
	if err := os.WriteFile(p, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s", p)
}

// setInput sets an input's value the way typing does, so the page's input
// handlers see it (datetime-local inputs cannot be typed into portably).
func setInput(sel, value string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => { const el = document.querySelector(%q); el.value = %q; el.dispatchEvent(new Event('input', {bubbles: true})); el.dispatchEvent(new Event('change', {bubbles: true})); })()`, sel, value))
}

// pick chooses an option of a <select> and tells the page.
func pick(sel, value string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(() => { const el = document.querySelector(%q); el.value = %q; el.dispatchEvent(new Event('change', {bubbles: true})); })()`, sel, value))
}

// waitJS polls a JavaScript condition until it holds.
func waitJS(cond string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](cond, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second))
}

func visible(sel string) chromedp.Action[chromedp.Void] {
	return chromedp.WaitVisible(chromedp.CSS(sel))
}
func click(sel string) chromedp.Action[chromedp.Void] { return chromedp.Click(chromedp.CSS(sel)) }

func TestDashboard(t *testing.T) {
	b := newBrowser(t)
	env := clienttest.Start(t, clienttest.Options{Traces: 40, RealWorker: true})
	dir := artifactsDir(t)
	start := time.Now()

	// Login: the root redirects to the dashboard, which asks for a token.
	b.do(t, "open", chromedp.Navigate(env.URL+"/"), visible(`#token`))
	if loc := eval[string](t, b, `location.pathname`); loc != "/ui/" {
		t.Fatalf("/ redirected to %s, want /ui/", loc)
	}
	b.do(t, "wrong token", chromedp.SendKeys(chromedp.CSS(`#token`), "not-a-token"), click(`form button[type=submit]`), visible(`.error-box`))
	b.shot(t, dir, "01-login")
	b.do(t, "log in", setInput(`#token`, ""), chromedp.SendKeys(chromedp.CSS(`#token`), clienttest.OperatorToken),
		click(`form button[type=submit]`), visible(`tr[data-trace-id]`))

	// Search: the default search is the last hour, newest first, 20 rows.
	ids := eval[[]string](t, b, `[...document.querySelectorAll('tr[data-trace-id]')].map(r => r.dataset.traceId)`)
	want := []string{}
	for i := len(env.Traces) - 1; i >= 0 && len(want) < 20; i-- {
		want = append(want, env.Traces[i].TraceID)
	}
	if !slices.Equal(ids, want) {
		t.Fatalf("default search shows %d traces %v, want the 20 newest %v", len(ids), ids, want)
	}
	if dots := eval[int](t, b, `document.querySelectorAll('svg.scatter circle').length`); dots != 20 {
		t.Fatalf("scatter plot has %d dots, want 20", dots)
	}
	b.shot(t, dir, "02-search")

	// Filter: failed traces through payments.
	wantFailed := 0
	for _, tr := range env.Traces {
		if tr.Error && slices.Contains(tr.Services, "payments") {
			wantFailed++
		}
	}
	b.do(t, "filter", waitJS(`document.querySelectorAll('select[name=service] option').length > 1`),
		pick(`select[name=service]`, "payments"), click(`input[name=error]`), click(`.search-form button[type=submit]`),
		waitJS(`location.hash.includes('service=payments') && location.hash.includes('error=true')`),
		waitJS(fmt.Sprintf(`document.querySelectorAll('tr[data-trace-id]').length === %d`, wantFailed)))
	if badges := eval[int](t, b, `document.querySelectorAll('tr[data-trace-id] .badge.err').length`); wantFailed == 0 || badges != wantFailed {
		t.Fatalf("filtered search shows %d failed traces, want %d", badges, wantFailed)
	}
	b.shot(t, dir, "03-search-filtered")

	// Open the first failed trace: the waterfall has a row per span.
	first := eval[string](t, b, `document.querySelector('tr[data-trace-id]').dataset.traceId`)
	idx := slices.IndexFunc(env.Traces, func(tr schemas.Trace) bool { return tr.TraceID == first })
	if idx < 0 {
		t.Fatalf("trace %s is not one of the seeded traces", first)
	}
	tr := env.Traces[idx]
	b.do(t, "open trace", click(`tr[data-trace-id] .trace-name`), visible(`.wf-row`))
	rows := eval[int](t, b, `document.querySelectorAll('.wf-row').length`)
	if title := text(t, b, `.trace-title h1`); rows != len(tr.Spans) || !strings.Contains(title, tr.RootOperation) {
		t.Fatalf("waterfall of %s shows %d rows titled %q, want %d spans and %q", tr.TraceID, rows, title, len(tr.Spans), tr.RootOperation)
	}
	// Bars sit on the time axis: the root spans the track, the others inside it.
	geo := eval[[]struct{ Left, Width, Track float64 }](t, b, `[...document.querySelectorAll('.wf-row')].map(r => { const t = r.querySelector('.wf-track').getBoundingClientRect(); const b = r.querySelector('.wf-bar').getBoundingClientRect(); return {Left: b.left - t.left, Width: b.width, Track: t.width}; })`)
	if len(geo) == 0 || geo[0].Left > 1 || geo[0].Width < geo[0].Track-1 {
		t.Fatalf("root bar at %+v, want it across the whole track", geo)
	}
	for i, g := range geo {
		if g.Left < -0.5 || g.Left+g.Width > g.Track+0.5 {
			t.Fatalf("bar %d outside the track: %+v", i, g)
		}
	}
	pads := eval[[]float64](t, b, `[...document.querySelectorAll('.wf-name')].map(n => parseFloat(n.style.paddingLeft))`)
	if pads[0] >= pads[1] || pads[1] >= pads[2] {
		t.Fatalf("rows are not indented by depth: %v", pads)
	}
	b.shot(t, dir, "04-trace-waterfall")

	// A span's details: the failed payments server span.
	var failedID, clientID string
	for _, s := range tr.Spans {
		if s.Error && s.Service == "payments" && s.Role == schemas.RoleServer {
			failedID = s.SpanID
		}
		if s.Role == schemas.RoleClient && s.Service == "orders" && s.Operation == "POST /charge" {
			clientID = s.SpanID
		}
	}
	if failedID == "" || clientID == "" {
		t.Fatalf("trace %s has no failed payments server span or no call to it", tr.TraceID)
	}
	b.do(t, "span details", click(fmt.Sprintf(`.wf-row[data-span-id="%s"]`, failedID)), visible(`aside.details`))
	details := text(t, b, `aside.details`)
	for _, w := range []string{"http1", "POST /charge", "502", "10.1.0.3:", "→ 10.1.0.6:8083", "node", "pid", "tcpseq", "node-payments"} {
		if !strings.Contains(details, w) {
			t.Fatalf("span details lack %q:\n%s", w, details)
		}
	}
	b.shot(t, dir, "05-span-details")
	// A client span shows local correlation's confidence.
	b.do(t, "client details", click(fmt.Sprintf(`.wf-row[data-span-id="%s"]`, clientID)), waitJS(`document.querySelector('aside.details .conf') !== null`))
	if conf := text(t, b, `aside.details .conf`); !strings.HasSuffix(conf, "%") {
		t.Fatalf("confidence %q", conf)
	}

	// The service map: services and untraced peers as nodes, calls as
	// labelled edges.
	b.do(t, "service map", click(`a.tab[href="#/map"]`), visible(`g.map-node`))
	nodes := eval[[]string](t, b, `[...document.querySelectorAll('g.map-node')].map(n => n.dataset.node)`)
	edges := eval[[]string](t, b, `[...document.querySelectorAll('g.map-edge[data-edge]')].map(n => n.dataset.edge)`)
	for _, n := range []string{"gateway", "orders", "users", "inventory", "payments", "redis://10.1.0.7:6379", "mysql://10.1.0.8:3306"} {
		if !slices.Contains(nodes, n) {
			t.Fatalf("service map lacks node %s: %v", n, nodes)
		}
	}
	for _, e := range []string{"gateway>orders", "orders>payments", "payments>redis://10.1.0.7:6379"} {
		if !slices.Contains(edges, e) {
			t.Fatalf("service map lacks edge %s: %v", e, edges)
		}
	}
	label := eval[string](t, b, `document.querySelector('g.map-edge[data-edge-label="orders>payments"] .edge-label').textContent`)
	if !strings.Contains(label, "err") || !strings.Contains(label, "p99") || !strings.Contains(label, "/") {
		t.Fatalf("orders→payments label %q lacks rate, errors or latency", label)
	}
	b.shot(t, dir, "06-service-map")

	// Reassembly: start a job over the last hour for one service, in
	// one-minute windows (60 tasks for the real worker, which re-reads the
	// stored spans and rewrites the traces), and follow it to 100%.
	b.do(t, "jobs page", click(`a.tab[href="#/jobs"]`), visible(`.job-form`), waitJS(`document.querySelectorAll('.chip.toggle').length > 0`))
	now := time.Now()
	local := func(t time.Time) string { return t.Local().Format("2006-01-02T15:04") }
	b.do(t, "start job", setInput(`input[name=from]`, local(now.Add(-time.Hour))), setInput(`input[name=to]`, local(now.Add(-time.Minute))),
		pick(`select[name=window]`, "1m"),
		chromedp.Evaluate[chromedp.Void](`[...document.querySelectorAll('.chip.toggle')].find(c => c.textContent.trim() === 'orders').click()`),
		click(`.job-form button[type=submit]`), visible(`tr[data-job-id]`))
	b.shot(t, dir, "07-reassembly-running")
	// Record every percentage the page shows until the job is done.
	seen := eval[[]string](t, b, `new Promise(resolve => { const seen = []; const t = setInterval(() => {
		const row = document.querySelector('tr[data-job-id]'); const p = row.querySelector('.pct').textContent;
		if (seen[seen.length-1] !== p) seen.push(p);
		if (row.dataset.state !== 'running') { clearInterval(t); resolve(seen); } }, 20); })`)
	t.Logf("reassembly progress seen: %v", seen)
	if len(seen) == 0 || seen[len(seen)-1] != "100%" {
		t.Fatalf("progress went %v; want it to end at 100%%", seen)
	}
	if st := eval[string](t, b, `document.querySelector('tr[data-job-id]').dataset.state`); st != "done" {
		t.Fatalf("job ended %s", st)
	}
	time.Sleep(300 * time.Millisecond) // let the bar's transition end before the picture
	b.shot(t, dir, "08-reassembly-done")

	// Log out: the session ends and the login screen returns.
	b.do(t, "log out", click(`.who button`), visible(`#token`))

	// Everything the page loaded came from the API's own origin.
	origin, _ := url.Parse(env.URL)
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range b.requests {
		u, err := url.Parse(r)
		if err != nil || (u.Scheme != "data" && u.Host != origin.Host) {
			t.Errorf("the page requested %s, outside %s", r, origin.Host)
		}
	}
	for _, e := range b.errors {
		t.Errorf("page error: %s", e)
	}
	t.Logf("%d requests, all to %s; browser steps took %s", len(b.requests), origin.Host, time.Since(start).Round(time.Millisecond))
}
