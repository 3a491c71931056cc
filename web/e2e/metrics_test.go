package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/chromedp"

	"github.com/deeptrace/deeptrace/alerting"
	"github.com/deeptrace/deeptrace/api/client/clienttest"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
	"github.com/deeptrace/deeptrace/worker/rollup"
)

// fraudPeer is a callee only the metrics index knows: orders calls it, no
// agent runs beside it, and no trace holds the calls (they are stored as
// spans and rolled up, never assembled). Its edge on the service map can
// only come from the metrics.
const fraudPeer = "http1://10.1.0.20:8090"

// red is one step of a series as the test expects it, computed from the
// seeded spans without the rollup.
type red struct {
	count, errors int
	p50, p90, p99 time.Duration
}

func nearestRank(sorted []time.Duration, p float64) time.Duration {
	return sorted[max(0, int(math.Ceil(p*float64(len(sorted))))-1)]
}

// expectSeries groups the server spans of service by step.
func expectSeries(traces []schemas.Trace, service string, step time.Duration) map[time.Time]red {
	durs := map[time.Time][]time.Duration{}
	errs := map[time.Time]int{}
	for _, tr := range traces {
		for _, s := range tr.Spans {
			if s.Service != service || s.Role != schemas.RoleServer {
				continue
			}
			m := s.Timestamp.Truncate(step)
			durs[m] = append(durs[m], time.Duration(s.DurationNs))
			if s.Error {
				errs[m]++
			}
		}
	}
	out := map[time.Time]red{}
	for m, d := range durs {
		slices.Sort(d)
		out[m] = red{count: len(d), errors: errs[m], p50: nearestRank(d, .5), p90: nearestRank(d, .9), p99: nearestRank(d, .99)}
	}
	return out
}

// fraudSpans are 120 calls from orders to fraudPeer in one minute: 114 of
// 20 ms, then 6 failed ones of 250 ms (p50 20 ms, p99 250 ms, 5% errors).
func fraudSpans(minute time.Time) []schemas.Span {
	var out []schemas.Span
	for i := range 120 {
		d, failed := 20*time.Millisecond, i >= 114
		if failed {
			d = 250 * time.Millisecond
		}
		start := minute.Add(time.Duration(i) * 400 * time.Millisecond).UnixNano()
		s := schemas.Span{Role: schemas.RoleClient, Protocol: schemas.ProtocolHTTP1, Operation: "POST /score", Method: "POST", Path: "/score",
			StatusCode: 200, StartNs: start, EndNs: start + int64(d), PID: 4139, TID: 4140, Process: "orders", Service: "orders",
			Host: "node-orders", Conn: schemas.Conn{ClientIP: "10.1.0.3", ClientPort: uint16(40000 + i), ServerIP: "10.1.0.20", ServerPort: 8090},
			Seq: 0, ReqTCPSeq: 0x70000001 + uint32(i)*2, RespTCPSeq: 0x71000001 + uint32(i)*2, IngestedAt: time.Unix(0, start).Add(2 * time.Second).UTC()}
		if failed {
			s.Error, s.StatusCode, s.StatusText = true, 503, "Service Unavailable"
		}
		s.SpanID = schemas.SpanID(s.Host, s.Conn, s.Seq, s.ReqTCPSeq, s.Role)
		s.Finish()
		out = append(out, s)
	}
	return out
}

// seedMetrics stores the traces' spans and the fraud calls, and rolls every
// minute up with the real rollup (worker/rollup), as the metrics
// scheduler's tasks would.
func seedMetrics(t *testing.T, env *clienttest.Env, fraudMinute time.Time) (first, last time.Time) {
	t.Helper()
	if err := env.WriteSpans(env.Traces...); err != nil {
		t.Fatal(err)
	}
	testenv.WriteSpans(t, env.Store, fraudSpans(fraudMinute))
	first = env.Traces[0].Spans[0].Timestamp.Truncate(time.Minute)
	last = env.Traces[len(env.Traces)-1].Spans[0].Timestamp.Truncate(time.Minute)
	docsWritten := rollUp(t, env, first, last)
	t.Logf("rollup of %s..%s wrote %d metric documents", first.Format("15:04"), last.Format("15:04"), docsWritten)
	return first, last
}

// rollUpMore stores n server spans of service three minutes ago and rolls
// that minute up, as a live rollup would while a page is open.
func rollUpMore(t *testing.T, env *clienttest.Env, service string, n int) time.Time {
	t.Helper()
	minute := time.Now().UTC().Add(-3 * time.Minute).Truncate(time.Minute)
	spans := make([]schemas.Span, n)
	for i := range spans {
		start := minute.Add(time.Duration(i) * time.Second).UnixNano()
		s := schemas.Span{Role: schemas.RoleServer, Protocol: schemas.ProtocolHTTP1, Operation: "GET /later", Method: "GET", Path: "/later",
			StatusCode: 200, StartNs: start, EndNs: start + int64(5*time.Millisecond), PID: 77, TID: 77, Process: service, Service: service,
			Host: "node-later", Conn: schemas.Conn{ClientIP: "10.9.0.1", ClientPort: uint16(50000 + i), ServerIP: "10.9.0.2", ServerPort: 80},
			ReqTCPSeq: 0x50000001 + uint32(i)}
		s.SpanID = schemas.SpanID(s.Host, s.Conn, s.Seq, s.ReqTCPSeq, s.Role)
		s.Finish()
		spans[i] = s
	}
	testenv.WriteSpans(t, env.Store, spans)
	rollUp(t, env, minute, minute)
	return minute
}

// rollUp rolls the minutes from first to last up with the real rollup
// (worker/rollup), as the metrics scheduler's tasks would, makes them
// searchable, and says how many metric documents it wrote.
func rollUp(t *testing.T, env *clienttest.Env, first, last time.Time) int {
	t.Helper()
	ctx := context.Background()
	r := rollup.New(rollup.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, env.Store, env.Redis)
	docs := 0
	for m := first; !m.After(last); m = m.Add(time.Minute) {
		res, err := r.Run(ctx, rollup.Payload{Minute: m, Shard: 0, Shards: 1})
		if err != nil {
			t.Fatalf("rollup %s: %v", m, err)
		}
		docs += res.Docs
	}
	if err := env.Store.Refresh(ctx, env.Store.Indices().Pattern(schemas.KindMetrics)); err != nil {
		t.Fatal(err)
	}
	return docs
}

// seedAlerts stores four rules and runs the real evaluator twice: at
// firstEval (data up to 8 minutes into the traces) and now. The rule that
// fires then resolves notifies webhook.
func seedAlerts(t *testing.T, env *clienttest.Env, firstEval time.Time, webhook string) map[string]alerting.Rule {
	t.Helper()
	ctx := context.Background()
	rules := alerting.NewRules(env.Redis)
	out := map[string]alerting.Rule{}
	for _, r := range []alerting.Rule{
		{Name: "gateway p99 over 20ms", Metric: alerting.MetricP99, Service: "gateway", Op: ">", Threshold: 20, Window: alerting.Duration(time.Hour)},
		{Name: "payments error rate", Metric: alerting.MetricErrorRate, Service: "payments", Op: ">", Threshold: 0.5, Window: alerting.Duration(time.Hour)},
		{Name: "orders to payments failing", Metric: alerting.MetricErrorRate, Service: "orders", Peer: "payments", Op: ">", Threshold: 0.1,
			Window: alerting.Duration(time.Hour), For: alerting.Duration(2 * time.Hour), Description: "pending for two hours before it fires"},
		{Name: "gateway has traffic", Metric: alerting.MetricCount, Service: "gateway", Op: ">", Threshold: 0, Window: alerting.Duration(5 * time.Minute),
			Webhook: webhook},
	} {
		c, err := rules.Create(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		out[c.Name] = c
	}
	ev := alerting.NewEvaluator(alerting.EvaluatorConfig{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, env.Redis, env.Store)
	for _, at := range []time.Time{firstEval, time.Now()} {
		rep, err := ev.Evaluate(ctx, at)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("evaluation at %s: %d transitions", at.Format("15:04:05"), len(rep.Transitions))
	}
	return out
}

// apiGet reads one of the API's JSON answers with a bearer token.
func apiGet(t *testing.T, env *clienttest.Env, token, path string, out any) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, env.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode == http.StatusOK && out != nil {
		if err := json.NewDecoder(res.Body).Decode(out); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	return res.StatusCode
}

// legends hovers the mouse over a card's first chart at time at and reads
// back every chart's legend in the card (the charts share the cursor):
// chart kind → series label → value shown.
func legends(t *testing.T, b *browser, card string, at time.Time) map[string]map[string]string {
	t.Helper()
	pos := eval[struct{ X, Y float64 }](t, b, fmt.Sprintf(`(() => {
		const card = document.querySelector(%q); card.scrollIntoView({block: 'center'});
		const c = card.querySelector('.chart'); const r = c.querySelector('.u-over').getBoundingClientRect();
		const from = +c.dataset.from, to = +c.dataset.to;
		return {X: r.left + (%d - from) / (to - from) * r.width, Y: r.top + r.height / 2}; })()`, card, at.Unix()))
	b.do(t, "hover "+card, chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, pos.X, pos.Y))
	return eval[map[string]map[string]string](t, b, fmt.Sprintf(`Object.fromEntries([...document.querySelectorAll(%q)].map(c => [c.dataset.chart,
		Object.fromEntries([...c.querySelectorAll('.u-legend tr')].map(tr => [tr.querySelector('.u-label').textContent, tr.querySelector('.u-value').textContent]))]))`, card+" .chart"))
}

// parseRate reads the dashboard's rates ("4/min", "0.5/s", "10/h", "0") as
// requests per second.
func parseRate(s string) (float64, error) {
	if s == "0" {
		return 0, nil
	}
	num, unit, ok := strings.Cut(s, "/")
	v, err := strconv.ParseFloat(num, 64)
	if !ok || err != nil {
		return 0, fmt.Errorf("rate %q", s)
	}
	switch unit {
	case "s":
		return v, nil
	case "min":
		return v / 60, nil
	case "h":
		return v / 3600, nil
	}
	return 0, fmt.Errorf("rate %q: unit %q", s, unit)
}

// near says whether a duration the page printed ("27.3ms") is d, allowing
// for the printed precision and rel (sketch accuracy on merged steps).
func near(t *testing.T, what, shown string, d time.Duration, rel float64) {
	t.Helper()
	got, err := time.ParseDuration(strings.ReplaceAll(shown, "µs", "us"))
	if err != nil {
		t.Fatalf("%s: %q is not a duration", what, shown)
	}
	if diff := math.Abs(float64(got - d)); diff > float64(d)*rel+float64(50*time.Microsecond) {
		t.Fatalf("%s shows %s, want %s", what, shown, d)
	}
}

func utcClock(ts time.Time) string { return ts.UTC().Format("2006-01-02 15:04:05") }

// waitUndelivered waits until the history holds n undelivered
// notifications of rule, and returns them, newest first.
func waitUndelivered(t *testing.T, env *clienttest.Env, rule string, n int) []alerting.Event {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		evs, err := alerting.NewRules(env.Redis).History(context.Background(), rule, 100)
		if err != nil {
			t.Fatal(err)
		}
		var out []alerting.Event
		for _, e := range evs {
			if e.Error != "" {
				out = append(out, e)
			}
		}
		if len(out) >= n {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20s the history of %s has %d undelivered notifications, want %d: %+v", rule, len(out), n, evs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestMetricsAndAlerts(t *testing.T) {
	b := newBrowser(t)
	env := clienttest.Start(t, clienttest.Options{Traces: 40})
	fraudMinute := env.Base.Truncate(time.Minute).Add(4 * time.Minute)
	first, last := seedMetrics(t, env, fraudMinute)
	// The rule that fires and resolves notifies a receiver on 127.0.0.1,
	// which the worker refuses: both notifications are undelivered, and
	// the receiver is never called.
	var hookCalls atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hookCalls.Add(1) }))
	defer hook.Close()
	// The real worker on the notify queue, as deployed: it refuses
	// webhooks on loopback addresses.
	env.StartWorker(t, jobs.QueueNotify)
	// The first evaluation reads the data up to 8 minutes into the traces
	// (the evaluator's default delay is 2 minutes).
	rules := seedAlerts(t, env, first.Add(10*time.Minute), hook.URL+"/deeptrace")
	traffic := rules["gateway has traffic"].ID
	undelivered := waitUndelivered(t, env, traffic, 2)
	dir := artifactsDir(t)
	// The page prints local times; pin them to UTC to compare.
	if _, err := chromedp.Call(b.ctx, emulation.SetTimezoneOverride, emulation.SetTimezoneOverrideParams{TimezoneID: "UTC"}); err != nil {
		t.Fatal(err)
	}
	b.do(t, "open", chromedp.Navigate(env.URL+"/ui/"), visible(`#token`))
	b.do(t, "log in as admin", chromedp.SendKeys(chromedp.CSS(`#token`), clienttest.AdminToken), click(`form button[type=submit]`), visible(`tr[data-trace-id]`))

	// Every service's charts, one-minute steps: hovering a minute shows
	// the seeded figures of that minute in all three of gateway's charts.
	gw := `section.metrics-card[data-service="gateway"]`
	b.do(t, "metrics page", click(`a.tab[href="#/metrics"]`), visible(gw+` .chart[data-chart="latency"] canvas`))
	for _, s := range []string{"gateway", "orders", "users", "inventory", "payments"} {
		b.do(t, "charts of "+s, visible(fmt.Sprintf(`section.metrics-card[data-service=%q] .chart[data-chart="rate"] .u-over`, s)))
	}
	want := expectSeries(env.Traces, "gateway", time.Minute)
	total, totalErr := 0, 0
	for m := first; !m.After(last); m = m.Add(time.Minute) {
		w := want[m]
		total, totalErr = total+w.count, totalErr+w.errors
		l := legends(t, b, gw, m)
		if l["rate"]["time"] != utcClock(m) {
			t.Fatalf("hovering %s shows time %q", utcClock(m), l["rate"]["time"])
		}
		rate, err := parseRate(l["rate"]["requests"])
		if err != nil || math.Abs(rate-float64(w.count)/60) > 1e-9+0.01*rate {
			t.Fatalf("gateway at %s shows %q requests, want %d in the minute", m.Format("15:04"), l["rate"]["requests"], w.count)
		}
		if l["errors"]["errors"] != strconv.Itoa(w.errors) {
			t.Fatalf("gateway at %s shows %q errors, want %d", m.Format("15:04"), l["errors"]["errors"], w.errors)
		}
		if w.count == 0 {
			continue
		}
		near(t, "gateway p50 at "+m.Format("15:04"), l["latency"]["p50"], w.p50, 0)
		near(t, "gateway p90 at "+m.Format("15:04"), l["latency"]["p90"], w.p90, 0)
		near(t, "gateway p99 at "+m.Format("15:04"), l["latency"]["p99"], w.p99, 0)
	}
	// After the traffic: no requests, no latency drawn (a gap, not zero).
	if l := legends(t, b, gw, last.Add(5*time.Minute)); l["rate"]["requests"] != "0" || l["latency"]["p99"] != "–" {
		t.Fatalf("a minute without requests shows %v", l)
	}
	if sum := text(t, b, gw+` [data-kind="rate"] .chart-summary`); !strings.HasPrefix(sum, fmt.Sprintf("%d requests", total)) {
		t.Fatalf("gateway's rate summary %q, want %d requests", sum, total)
	}
	if sum := text(t, b, gw+` [data-kind="errors"] .chart-summary`); !strings.HasPrefix(sum, fmt.Sprintf("%d errors", totalErr)) {
		t.Fatalf("gateway's error summary %q, want %d errors", sum, totalErr)
	}
	b.shot(t, dir, "09-metrics")

	// Dragging across a chart zooms every chart into the dragged range.
	xs := eval[struct{ X1, X2, Y float64 }](t, b, fmt.Sprintf(`(() => {
		const c = document.querySelector(%q); const r = c.querySelector('.u-over').getBoundingClientRect();
		const from = +c.dataset.from, to = +c.dataset.to, x = v => r.left + (v - from) / (to - from) * r.width;
		return {X1: x(%d), X2: x(%d), Y: r.top + r.height / 2}; })()`, gw+` .chart[data-chart="rate"]`, first.Unix(), last.Add(time.Minute).Unix()))
	b.do(t, "drag to zoom", chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, xs.X1, xs.Y),
		chromedp.MouseEvent(input.DispatchMouseEventTypeMousePressed, xs.X1, xs.Y, chromedp.ButtonLeft),
		chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, (xs.X1+xs.X2)/2, xs.Y, chromedp.ButtonLeft),
		chromedp.MouseEvent(input.DispatchMouseEventTypeMouseMoved, xs.X2, xs.Y, chromedp.ButtonLeft),
		chromedp.MouseEvent(input.DispatchMouseEventTypeMouseReleased, xs.X2, xs.Y, chromedp.ButtonLeft),
		waitJS(`location.hash.includes('from=') && location.hash.includes('to=') && !location.hash.includes('lookback=')`),
		// the charts of the zoomed range, not the ones before it
		waitJS(fmt.Sprintf(`(() => { const c = document.querySelector(%q); return !!c && !!c.querySelector('.u-over') && +c.dataset.from > %d; })()`,
			gw+` .chart[data-chart="latency"]`, first.Add(-2*time.Minute).Unix())))
	zoom := eval[struct{ From, To float64 }](t, b, fmt.Sprintf(`(() => { const c = document.querySelector(%q); return {From: +c.dataset.from, To: +c.dataset.to}; })()`, gw+` .chart[data-chart="rate"]`))
	if d := zoom.From - float64(first.Unix()); d < -60 || d > 60 {
		t.Fatalf("zoomed charts start at %s, want about %s", time.Unix(int64(zoom.From), 0).UTC(), first)
	}
	if d := zoom.To - float64(last.Add(time.Minute).Unix()); d < -60 || d > 60 {
		t.Fatalf("zoomed charts end at %s, want about %s", time.Unix(int64(zoom.To), 0).UTC(), last.Add(time.Minute))
	}
	mid := first.Add(last.Sub(first) / 2).Truncate(time.Minute)
	if l := legends(t, b, gw, mid); l["errors"]["errors"] != strconv.Itoa(want[mid].errors) || l["rate"]["time"] != utcClock(mid) {
		t.Fatalf("zoomed gateway at %s shows %v, want %d errors", mid.Format("15:04"), l, want[mid].errors)
	}
	b.do(t, "reset zoom", click(`.metrics-toolbar button.link`), waitJS(`!location.hash.includes('from=')`),
		waitJS(fmt.Sprintf(`(() => { const c = document.querySelector(%q); return !!c && !!c.querySelector('.u-over') && +c.dataset.from < %d; })()`,
			gw+` .chart[data-chart="latency"]`, first.Add(-2*time.Minute).Unix())))

	// A range that ends now reads its series again by itself (here every
	// 10s): a minute rolled up while the page is open shows without a
	// reload.
	b.do(t, "refresh every 10s", pick(`select[name=refresh]`, "10s"), waitJS(`location.hash.includes('refresh=10s')`),
		visible(gw+` .chart[data-chart="rate"] .u-over`))
	requestsShown := fmt.Sprintf(`document.querySelector(%q).textContent`, gw+` [data-kind="rate"] .chart-summary`)
	before := eval[string](t, b, requestsShown)
	late := rollUpMore(t, env, "gateway", 7)
	b.do(t, "the new minute shows", chromedp.Poll[chromedp.Void](fmt.Sprintf(`%s.startsWith('%d requests')`, requestsShown, total+7),
		chromedp.WithPollingInterval(200*time.Millisecond), chromedp.WithPollingTimeout(40*time.Second)))
	t.Logf("rate summary %q, then %q after %s rolled up, with no reload", before, eval[string](t, b, requestsShown), late.Format("15:04"))

	// Five-minute steps: the sum of the minutes, percentiles from merged
	// sketches (within 1%).
	b.do(t, "5m step", pick(`select[name=step]`, "5m"), waitJS(`location.hash.includes('step=5m')`),
		visible(gw+` .red-charts[data-step="5m0s"] .chart[data-chart="latency"] .u-over`))
	want5 := expectSeries(env.Traces, "gateway", 5*time.Minute)
	for m, w := range want5 {
		l := legends(t, b, gw, m)
		rate, err := parseRate(l["rate"]["requests"])
		if err != nil || math.Abs(rate-float64(w.count)/300) > 0.01*rate {
			t.Fatalf("gateway's 5m step at %s shows %q, want %d requests in 5 minutes", m.Format("15:04"), l["rate"]["requests"], w.count)
		}
		near(t, "gateway 5m p50 at "+m.Format("15:04"), l["latency"]["p50"], w.p50, 0.011)
		near(t, "gateway 5m p90 at "+m.Format("15:04"), l["latency"]["p90"], w.p90, 0.011)
		near(t, "gateway 5m p99 at "+m.Format("15:04"), l["latency"]["p99"], w.p99, 0.011)
	}

	// One service: its operations (the server side only) and the calls it
	// makes, each with its own charts.
	b.do(t, "gateway's page", click(gw+` a.svc`), visible(`[data-service-detail="gateway"] section[data-operation]`),
		visible(`[data-service-detail="gateway"] section[data-peer] .chart canvas`))
	ops := eval[[]string](t, b, `[...document.querySelectorAll('section[data-operation]')].map(s => s.dataset.operation).sort()`)
	if wantOps := slices.Sorted(slices.Values(clienttest.Scenarios)); !slices.Equal(ops, wantOps) {
		t.Fatalf("gateway's operations %v, want %v", ops, wantOps)
	}
	peers := eval[[]string](t, b, `[...document.querySelectorAll('section[data-peer]')].map(s => s.dataset.peer).sort()`)
	if !slices.Equal(peers, []string{"inventory", "orders", "users"}) {
		t.Fatalf("gateway calls %v, want inventory, orders, users", peers)
	}
	orderErrs := 0
	for _, tr := range env.Traces {
		if tr.RootOperation == "POST /api/orders" && tr.Error {
			orderErrs++
		}
	}
	if sum := text(t, b, `section[data-operation="POST /api/orders"] [data-kind="errors"] .chart-summary`); orderErrs == 0 || !strings.HasPrefix(sum, fmt.Sprintf("%d errors", orderErrs)) {
		t.Fatalf("POST /api/orders error summary %q, want %d errors", sum, orderErrs)
	}
	if strip := text(t, b, `.alert-strip`); !strings.Contains(strip, "gateway p99 over 20ms") || !strings.Contains(strip, "firing") {
		t.Fatalf("gateway's alert rules strip: %q", strip)
	}
	b.shot(t, dir, "10-metrics-service")

	// The service map: edge labels from the metrics index.
	b.do(t, "service map", click(`a.tab[href="#/map"]`), visible(`g.map-edge[data-edge-label="orders>payments"]`))
	if nodes := eval[[]string](t, b, `[...document.querySelectorAll('g.map-node')].map(n => n.dataset.node)`); !slices.Contains(nodes, fraudPeer) {
		t.Fatalf("the map lacks %s, which only the metrics index knows: %v", fraudPeer, nodes)
	}
	type edgeLabel struct{ Source, Text string }
	label := func(edge string) edgeLabel {
		return eval[edgeLabel](t, b, fmt.Sprintf(`(() => { const g = document.querySelector('g.map-edge[data-edge-label=%q]');
			return {Source: g.dataset.source, Text: [...g.querySelectorAll('.edge-label text')].map(t => t.textContent).join(' | ')}; })()`, edge))
	}
	var calls, fails int
	for _, tr := range env.Traces {
		for _, s := range tr.Spans {
			if s.Service == "orders" && s.Role == schemas.RoleClient && s.Operation == "POST /charge" {
				calls++
				if s.Error {
					fails++
				}
			}
		}
	}
	checkLabel := func(edge string, n int, errPct string, p50, p99 time.Duration) {
		t.Helper()
		l := label(edge)
		if l.Source != "metrics" {
			t.Fatalf("edge %s label comes from %q, want the metrics index", edge, l.Source)
		}
		var rateS, pctS, p50S, p99S string
		if _, err := fmt.Sscanf(strings.NewReplacer(" · ", " ", " | ", " ").Replace(l.Text), "%s %s err p50 %s p99 %s", &rateS, &pctS, &p50S, &p99S); err != nil {
			t.Fatalf("edge %s label %q: %v", edge, l.Text, err)
		}
		rate, err := parseRate(rateS)
		// The map's range is the last hour from now, to the minute.
		// The page prints two or three significant digits.
		if lo, hi := float64(n)/3660, float64(n)/3600; err != nil || rate < lo*0.97 || rate > hi*1.03 {
			t.Fatalf("edge %s label %q: rate %s, want %d calls in the hour", edge, l.Text, rateS, n)
		}
		if pctS != errPct {
			t.Fatalf("edge %s label %q: error rate %s, want %s", edge, l.Text, pctS, errPct)
		}
		near(t, edge+" p50", p50S, p50, 0.011)
		near(t, edge+" p99", p99S, p99, 0.011)
	}
	checkLabel("orders>payments", calls, fmt.Sprintf("%.1f%%", 100*float64(fails)/float64(calls)), 38300*time.Microsecond, 38300*time.Microsecond)
	checkLabel("orders>"+fraudPeer, 120, "5.0%", 20*time.Millisecond, 250*time.Millisecond)
	// Every edge of the traces, and the fraud calls, with figures from the
	// metrics index.
	var spans [][]schemas.TraceSpan
	for _, tr := range env.Traces {
		spans = append(spans, tr.Spans)
	}
	nEdges := len(store.DependencyEdges(spans)) + 1
	if src, want := text(t, b, `.map-source`), fmt.Sprintf("%d edges: %d with figures from the metrics index;", nEdges, nEdges); !strings.Contains(src, want) {
		t.Fatalf("map source line %q, want %q", src, want)
	}
	b.shot(t, dir, "11-service-map-metrics")
	// A label opens the edge's charts.
	b.do(t, "edge charts", click(`g.map-edge[data-edge-label="orders>payments"] .edge-label`),
		visible(`[data-service-detail="orders"] section.metrics-card.focused[data-peer="payments"] .chart canvas`))
	if sum := text(t, b, `section[data-peer="payments"] [data-kind="errors"] .chart-summary`); !strings.HasPrefix(sum, fmt.Sprintf("%d errors", fails)) {
		t.Fatalf("orders → payments error summary %q, want %d errors", sum, fails)
	}

	// Alerts: what fires, every rule, the history of transitions.
	b.do(t, "alerts page", click(`a.tab[href="#/alerts"]`), visible(`tr[data-alert-id]`), visible(`tr[data-rule-id]`), visible(`tr[data-transition]`),
		waitJS(`document.querySelector('a.tab[href="#/alerts"] .tab-count')?.textContent === '1'`)) // one rule fires
	var active struct {
		Alerts []struct {
			ID    string         `json:"id"`
			State alerting.State `json:"state"`
		} `json:"alerts"`
	}
	apiGet(t, env, clienttest.AdminToken, "/api/v1/alerts", &active)
	shown := eval[map[string]string](t, b, `Object.fromEntries([...document.querySelectorAll('tr[data-alert-id]')].map(r => [r.dataset.alertId, r.dataset.status + ' ' + r.querySelector('.alert-value').textContent]))`)
	p99Rule, pendingRule := rules["gateway p99 over 20ms"], rules["orders to payments failing"]
	if len(active.Alerts) != 2 || len(shown) != 2 {
		t.Fatalf("the API has %d active alerts, the page %d (%v); want the p99 rule firing and the edge rule pending", len(active.Alerts), len(shown), shown)
	}
	maxRoot := time.Duration(0)
	for _, tr := range env.Traces {
		maxRoot = max(maxRoot, time.Duration(tr.DurationNs))
	}
	for _, a := range active.Alerts {
		v := strconv.FormatFloat(math.Round(*a.State.Value*1000)/1000, 'f', -1, 64)
		var wantRow string
		switch a.ID {
		case p99Rule.ID:
			wantRow = "firing " + v + " ms"
			near(t, "the p99 rule's value", v+"ms", maxRoot, 0.011)
		case pendingRule.ID:
			wantRow = "pending " + strconv.FormatFloat(math.Round(*a.State.Value*100*1000)/1000, 'f', -1, 64) + "%"
		default:
			t.Fatalf("alert %s is active, want only %s and %s", a.ID, p99Rule.ID, pendingRule.ID)
		}
		if shown[a.ID] != wantRow {
			t.Fatalf("alert %s shows %q, want %q", a.ID, shown[a.ID], wantRow)
		}
	}
	ruleRows := eval[map[string]string](t, b, `Object.fromEntries([...document.querySelectorAll('tr[data-rule-id]')].map(r => [r.dataset.ruleName, r.querySelector('.badge').textContent]))`)
	for name, st := range map[string]string{"gateway p99 over 20ms": "firing", "payments error rate": "ok", "orders to payments failing": "pending", "gateway has traffic": "resolved"} {
		if ruleRows[name] != st {
			t.Fatalf("rule %q shows %q, want %q (rows %v)", name, ruleRows[name], st, ruleRows)
		}
	}
	var hist struct {
		Events []alerting.Event `json:"events"`
	}
	apiGet(t, env, clienttest.AdminToken, "/api/v1/alerts/history", &hist)
	rows := eval[[]string](t, b, `[...document.querySelectorAll('tr[data-transition]')].map(r => r.dataset.eventRule + ' ' + r.dataset.transition)`)
	var wantRows []string
	for _, e := range hist.Events {
		wantRows = append(wantRows, e.RuleID+" "+string(e.From)+">"+string(e.To))
	}
	for _, w := range []string{traffic + " ok>pending", traffic + " pending>firing", traffic + " firing>resolved", p99Rule.ID + " pending>firing", pendingRule.ID + " ok>pending"} {
		if !slices.Contains(rows, w) {
			t.Fatalf("history lacks %s: %v", w, rows)
		}
	}
	if !slices.Equal(rows, wantRows) {
		t.Fatalf("history shows %v, the API %v", rows, wantRows)
	}
	// The undelivered notifications: each says so, which one, and why;
	// the rule's row warns that its last one was not delivered.
	type undeliveredRow struct{ Rule, To, Text, Reason string }
	shownUndelivered := eval[[]undeliveredRow](t, b, `[...document.querySelectorAll('tr[data-undelivered]')].map(r => ({Rule: r.dataset.eventRule, To: r.dataset.undelivered,
		Text: r.querySelector('.undelivered').textContent, Reason: r.querySelector('.undelivered-reason').textContent}))`)
	if len(shownUndelivered) != len(undelivered) {
		t.Fatalf("the history shows %d undelivered notifications %v, the API %d", len(shownUndelivered), shownUndelivered, len(undelivered))
	}
	tos := map[string]bool{}
	for i, e := range undelivered {
		r := shownUndelivered[i]
		reason := strings.TrimPrefix(e.Error, "notification not delivered: ")
		if r.Rule != traffic || r.To != string(e.To) || r.Reason != reason || !strings.Contains(r.Text, "not delivered the "+string(e.To)+" notification") ||
			!strings.Contains(reason, "webhook "+hook.URL+"/deeptrace") || !strings.Contains(reason, "127.0.0.1 is a loopback address") ||
			!strings.Contains(reason, "--webhook-allow-local") {
			t.Fatalf("undelivered row %d shows %+v, want the %s notification of %s and why (%q)", i, r, e.To, traffic, e.Error)
		}
		tos[r.To] = true
	}
	if !tos["firing"] || !tos["resolved"] {
		t.Fatalf("undelivered notifications %v, want the firing's and the resolution's", shownUndelivered)
	}
	warned := eval[[]string](t, b, `[...document.querySelectorAll('tr[data-rule-id]')].filter(r => r.querySelector('.notify-failed')).map(r => r.dataset.ruleId)`)
	if !slices.Equal(warned, []string{traffic}) {
		t.Fatalf("rules warning of an undelivered notification: %v, want only %s", warned, traffic)
	}
	if n := hookCalls.Load(); n != 0 {
		t.Fatalf("the loopback webhook was called %d times", n)
	}
	b.shot(t, dir, "12-alerts")
	// One rule's history, and the warning that its last notification, the
	// resolution, was not delivered.
	b.do(t, "one rule's history", click(fmt.Sprintf(`tr[data-rule-id=%q] a.rule-name`, traffic)),
		waitJS(fmt.Sprintf(`[...document.querySelectorAll('tr[data-transition]')].every(r => r.dataset.eventRule === %q) && document.querySelectorAll('tr[data-transition]').length === 5`, traffic)),
		visible(fmt.Sprintf(`.warn-box[data-undelivered-rule=%q]`, traffic)))
	warning := text(t, b, `.warn-box`)
	if !strings.Contains(warning, "Last notification not delivered") || !strings.Contains(warning, "that the rule resolved") ||
		!strings.Contains(warning, "127.0.0.1 is a loopback address") {
		t.Fatalf("the rule's warning reads %q", warning)
	}
	b.shot(t, dir, "12b-alert-undelivered")
	// A poll that fails shows its error; the next one that succeeds
	// clears it. The page's fetch answers 503 for the history meanwhile.
	b.do(t, "history fails", chromedp.Evaluate[chromedp.Void](`(() => { window.failHistory = true; const f = window.fetch;
		window.fetch = (u, o) => window.failHistory && String(u).includes('/alerts/history')
			? Promise.resolve(new Response('{"error":"alert history: unavailable (test)"}', {status: 503, headers: {'Content-Type': 'application/json'}}))
			: f(u, o); })()`), click(`.history-title a[href="#/alerts"]`), visible(`.error-box[data-error=load]`))
	if msg := text(t, b, `.error-box[data-error=load]`); !strings.Contains(msg, "alert history: unavailable (test)") {
		t.Fatalf("the failed poll's error reads %q", msg)
	}
	b.do(t, "history back", chromedp.Evaluate[chromedp.Void](`window.failHistory = false`), click(fmt.Sprintf(`tr[data-rule-id=%q] a.rule-name`, traffic)),
		visible(fmt.Sprintf(`.warn-box[data-undelivered-rule=%q]`, traffic)), waitJS(`document.querySelector('.error-box') === null`))

	// An admin creates a rule; the API refuses a bad threshold and the
	// form says which field.
	b.do(t, "new rule", click(`[data-action=new-rule]`), visible(`form.rule-form input[name=name]`),
		setInput(`input[name=name]`, "orders to payments errors (ui)"), pick(`select[name=metric]`, "error_rate"),
		pick(`select[name=scope]`, "edge"), visible(`input[name=peer]`),
		setInput(`input[name=service]`, "orders"), setInput(`input[name=peer]`, "payments"),
		setInput(`input[name=threshold]`, "5"), pick(`select[name=window]`, "10m"), pick(`select[name=for]`, "5m"),
		setInput(`input[name=webhook]`, "https://hooks.example.test/deeptrace"),
		click(`form.rule-form button[type=submit]`), visible(`label[data-field=threshold].invalid .field-error`))
	if msg := text(t, b, `label[data-field=threshold] .field-error`); !strings.Contains(msg, "threshold 5") || !strings.Contains(msg, "fraction") {
		t.Fatalf("the threshold's refusal reads %q", msg)
	}
	if box := text(t, b, `form.rule-form .error-box`); !strings.Contains(box, "refused") {
		t.Fatalf("the form's error box reads %q", box)
	}
	b.shot(t, dir, "13-rule-refused")
	b.do(t, "fix threshold", setInput(`input[name=threshold]`, "0.05"), click(`form.rule-form button[type=submit]`),
		waitJS(`location.hash.startsWith('#/alerts?rule=')`), visible(`tr[data-rule-id].selected`))
	id := eval[string](t, b, `new URLSearchParams(location.hash.split('?')[1]).get('rule')`)
	var got alerting.Rule
	if code := apiGet(t, env, clienttest.AdminToken, "/api/v1/alerts/rules/"+id, &got); code != http.StatusOK {
		t.Fatalf("GET the created rule %s: %d", id, code)
	}
	if got.Name != "orders to payments errors (ui)" || got.Metric != alerting.MetricErrorRate || got.Scope != schemas.ScopeEdge || got.Service != "orders" ||
		got.Peer != "payments" || got.Op != ">" || got.Threshold != 0.05 || time.Duration(got.Window) != 10*time.Minute || time.Duration(got.For) != 5*time.Minute ||
		got.Webhook != "https://hooks.example.test/deeptrace" || got.Version != 1 {
		t.Fatalf("the API stored %+v", got)
	}

	// Edit it: threshold and window.
	row := fmt.Sprintf(`tr[data-rule-id=%q]`, id)
	b.do(t, "edit rule", click(row+` [data-action=edit]`), waitJS(`document.querySelector('input[name=threshold]')?.value === '0.05'`),
		setInput(`input[name=threshold]`, "0.1"), pick(`select[name=window]`, "15m"), click(`form.rule-form button[type=submit]`),
		waitJS(`location.hash.startsWith('#/alerts?rule=')`), waitJS(fmt.Sprintf(`document.querySelector('%s .rule-condition')?.textContent.includes('10%% over 15m')`, row)))
	apiGet(t, env, clienttest.AdminToken, "/api/v1/alerts/rules/"+id, &got)
	if got.Threshold != 0.1 || time.Duration(got.Window) != 15*time.Minute || got.Version != 2 || got.Peer != "payments" {
		t.Fatalf("after the edit the API has %+v", got)
	}

	// Delete it, after a confirmation.
	b.do(t, "delete rule", click(row+` [data-action=delete]`), visible(row+` [data-action=confirm-delete]`), click(row+` [data-action=confirm-delete]`),
		waitJS(fmt.Sprintf(`document.querySelector('%s') === null`, row)))
	if code := apiGet(t, env, clienttest.AdminToken, "/api/v1/alerts/rules/"+id, nil); code != http.StatusNotFound {
		t.Fatalf("GET the deleted rule: %d, want 404", code)
	}

	// A viewer reads rules and alerts, and has no control to change them.
	b.do(t, "log out", click(`.who button`), visible(`#token`))
	b.do(t, "log in as viewer", setInput(`#token`, ""), chromedp.SendKeys(chromedp.CSS(`#token`), clienttest.ViewerToken), click(`form button[type=submit]`),
		visible(`.who .role`), chromedp.Evaluate[chromedp.Void](`location.hash = '#/alerts'`), visible(`tr[data-rule-id]`), visible(`.readonly-note`))
	if role := text(t, b, `.who .role`); role != "viewer" {
		t.Fatalf("signed in as %q, want viewer", role)
	}
	if n := eval[int](t, b, `document.querySelectorAll('tr[data-rule-id]').length`); n != len(rules) {
		t.Fatalf("the viewer sees %d rules, want %d", n, len(rules))
	}
	if n := eval[int](t, b, `document.querySelectorAll('[data-action]').length`); n != 0 {
		t.Fatalf("the viewer has %d rule controls, want none", n)
	}
	b.shot(t, dir, "14-alerts-viewer")
	b.do(t, "viewer opens the form", chromedp.Evaluate[chromedp.Void](`location.hash = '#/alerts/new'`), visible(`.rule-form.refused`))
	if msg := text(t, b, `.rule-form.refused`); !strings.Contains(msg, "needs an admin token") || !strings.Contains(msg, "viewer") {
		t.Fatalf("the viewer's form reads %q", msg)
	}
	if n := eval[int](t, b, `document.querySelectorAll('form input, form button[type=submit]').length`); n != 0 {
		t.Fatalf("the viewer's form page has %d inputs", n)
	}
	// The controls are not the only barrier: the API refuses the viewer's
	// session too, and says why.
	refusal := eval[struct {
		Status int
		Error  string
	}](t, b, `fetch('/api/v1/alerts/rules', {method: 'POST', headers: {'Content-Type': 'application/json', 'X-CSRF-Token': decodeURIComponent((document.cookie.match(/deeptrace_csrf=([^;]*)/) || [])[1] || '')},
		body: JSON.stringify({name: 'x', metric: 'p99', service: 'gateway', op: '>', threshold: 1})}).then(async r => ({Status: r.status, Error: (await r.json()).error}))`)
	if refusal.Status != http.StatusForbidden || !strings.Contains(refusal.Error, "needs the admin role") {
		t.Fatalf("the viewer's POST got %d %q, want 403 naming the admin role", refusal.Status, refusal.Error)
	}

	origin, _ := url.Parse(env.URL)
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range b.requests {
		if u, err := url.Parse(r); err != nil || (u.Scheme != "data" && u.Host != origin.Host) {
			t.Errorf("the page requested %s, outside %s", r, origin.Host)
		}
	}
	for _, e := range b.errors {
		t.Errorf("page error: %s", e)
	}
}
