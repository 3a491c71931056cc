package alerting_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/alerting"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

func TestRuleValidateNamesField(t *testing.T) {
	cases := []struct {
		rule alerting.Rule
		want string
	}{
		{alerting.Rule{Name: "x", Metric: "p95", Service: "a", Op: ">"}, "metric"},
		{alerting.Rule{Name: "x", Metric: "p99", Op: ">"}, "service"},
		{alerting.Rule{Name: "x", Metric: "p99", Service: "a", Op: "=="}, "op"},
		{alerting.Rule{Name: "x", Metric: "error_rate", Service: "a", Op: ">", Threshold: 2}, "threshold"},
		{alerting.Rule{Name: "x", Metric: "p99", Service: "a", Op: ">", Webhook: "ftp://x"}, "webhook"},
		{alerting.Rule{Name: "x", Metric: "p99", Service: "a", Op: ">", Window: alerting.Duration(30 * time.Second)}, "window"},
		{alerting.Rule{Name: "x", Metric: "p99", Service: "a", Scope: schemas.ScopeEdge, Op: ">"}, "peer"},
	}
	for _, c := range cases {
		err := c.rule.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one naming %s", c.rule, err, c.want)
		}
	}
	ok := alerting.Rule{Name: "edge errors", Metric: "error_rate", Service: "a", Peer: "b", Op: ">", Threshold: 0.02}
	if err := ok.Validate(); err != nil || ok.Scope != schemas.ScopeEdge {
		t.Errorf("valid rule refused: %v (scope %s)", err, ok.Scope)
	}
}

// receiver is the test's webhook: it counts the notifications it accepted
// by task id; while hold is set it keeps requests open until the sender
// gives up (a worker stopped mid-delivery) and does not count them.
type receiver struct {
	mu     sync.Mutex
	got    map[string]int
	bodies []alerting.Notification
	hold   bool
	held   chan struct{}
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var n alerting.Notification
	if err := json.NewDecoder(r.Body).Decode(&n); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	rc.mu.Lock()
	hold := rc.hold
	rc.mu.Unlock()
	if hold {
		select {
		case rc.held <- struct{}{}:
		default:
		}
		<-r.Context().Done()
		return
	}
	rc.mu.Lock()
	rc.got[r.Header.Get("Idempotency-Key")]++
	rc.bodies = append(rc.bodies, n)
	rc.mu.Unlock()
}

func (rc *receiver) count() (total int, byKey map[string]int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	byKey = map[string]int{}
	for k, v := range rc.got {
		byKey[k] = v
		total += v
	}
	return total, byKey
}

// startWorker serves the notify queue; its notifier reaches the tests'
// receivers on 127.0.0.1.
func startWorker(rdb *redis.Client) *asynq.Server {
	return startNotifier(rdb, alerting.NotifierConfig{AllowLocal: true})
}

func startNotifier(rdb *redis.Client, cfg alerting.NotifierConfig) *asynq.Server {
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency: 2, Queues: map[string]int{jobs.QueueNotify: 1},
		RetryDelayFunc:  func(int, error, *asynq.Task) time.Duration { return 200 * time.Millisecond },
		ShutdownTimeout: 500 * time.Millisecond, LogLevel: asynq.FatalLevel, DelayedTaskCheckInterval: 100 * time.Millisecond,
	})
	mux := asynq.NewServeMux()
	alerting.Register(mux, alerting.NewNotifier(cfg, rdb))
	if err := srv.Start(mux); err != nil {
		panic(err)
	}
	return srv
}

// writeSeries writes one service-scope metric document per minute with
// the given p99 (ms).
func writeSeries(t *testing.T, st *store.Store, service string, start time.Time, p99 []int64) {
	t.Helper()
	var docs []store.Doc
	for i, v := range p99 {
		m := schemas.Metric{Timestamp: start.Add(time.Duration(i) * time.Minute), Scope: schemas.ScopeService, Service: service,
			Count: 100, Errors: 1, P50Ns: v * 1e6 / 2, P90Ns: v * 1e6, P99Ns: v * 1e6, MaxNs: v * 1e6, SumNs: 100 * v * 1e6 / 2,
			Sketch: schemas.SketchOf([]int64{v * 1e6})}
		b, _ := json.Marshal(m)
		docs = append(docs, store.Doc{Index: st.Indices().Name(schemas.KindMetrics, m.Timestamp),
			ID: schemas.MetricID(m.Timestamp, m.Scope, m.Service, "", ""), Body: b})
	}
	res, err := st.Bulk(context.Background(), docs, "true")
	if err != nil || len(res.Failed) > 0 {
		t.Fatalf("write metrics: %v %v", err, res.Failed)
	}
}

func TestFireResolveNotifyOncePerFiring(t *testing.T) {
	st := testenv.Store(t)
	rdb := testenv.Redis(t)
	ctx := context.Background()
	rc := &receiver{got: map[string]int{}, held: make(chan struct{}, 1), hold: true}
	hook := httptest.NewServer(rc)
	defer hook.Close()

	// 20 minutes: p99 100 ms, then 300+ ms from minute 5 to 11, then 100.
	start := time.Now().UTC().Add(-40 * time.Minute).Truncate(time.Minute)
	series := []int64{100, 100, 100, 100, 100, 400, 450, 500, 420, 410, 400, 380, 100, 100, 100, 100, 100, 100, 100, 100}
	writeSeries(t, st, "pay", start, series)
	writeSeries(t, st, "idle", start, []int64{50, 50, 50}) // then no spans at all

	rules := alerting.NewRules(rdb)
	slow, err := rules.Create(ctx, alerting.Rule{Name: "pay p99 above 300ms for 5m", Metric: alerting.MetricP99, Service: "pay",
		Op: ">", Threshold: 300, For: alerting.Duration(5 * time.Minute), Webhook: hook.URL})
	if err != nil {
		t.Fatal(err)
	}
	silent, err := rules.Create(ctx, alerting.Rule{Name: "no spans from idle for 10m", Metric: alerting.MetricCount, Service: "idle",
		Op: "<", Threshold: 1, Window: alerting.Duration(10 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	delay := 2 * time.Minute
	ev := alerting.NewEvaluator(alerting.EvaluatorConfig{Delay: delay}, rdb, st)
	statusAt := map[string][]alerting.Status{}
	w1 := startWorker(rdb)
	for i := 1; i <= len(series); i++ {
		end := start.Add(time.Duration(i) * time.Minute)
		// Twice per minute, as the 30 s schedule would.
		for _, off := range []time.Duration{0, 30 * time.Second} {
			if _, err := ev.Evaluate(ctx, end.Add(delay+off)); err != nil {
				t.Fatal(err)
			}
		}
		states, err := rules.States(ctx)
		if err != nil {
			t.Fatal(err)
		}
		statusAt[slow.ID] = append(statusAt[slow.ID], states[slow.ID].Status)
		statusAt[silent.ID] = append(statusAt[silent.ID], states[silent.ID].Status)
		if i == 10 {
			// The firing notification is in flight to the held webhook:
			// stop the worker mid-delivery and start another.
			select {
			case <-rc.held:
			case <-time.After(10 * time.Second):
				t.Fatal("the firing notification never reached the webhook")
			}
			w1.Shutdown()
			rc.mu.Lock()
			rc.hold = false
			rc.mu.Unlock()
			w1 = startWorker(rdb)
		}
	}
	defer w1.Shutdown()
	// Minutes 6..12 (i=6..12) breach; pending from i=6, firing when 5
	// minutes have breached (i=10), resolved at i=13.
	want := []alerting.Status{"ok", "ok", "ok", "ok", "ok", "pending", "pending", "pending", "pending", "firing", "firing", "firing", "resolved"}
	for i, w := range want {
		if got := statusAt[slow.ID][i]; got != w {
			t.Errorf("slow rule after minute %d: %s, want %s (all: %v)", i+1, got, w, statusAt[slow.ID])
			break
		}
	}
	// idle has spans in minutes 1..3; a 10 m window without any is at i=13.
	for i, s := range statusAt[silent.ID] {
		w := alerting.StatusOK
		if i+1 >= 13 {
			w = alerting.StatusFiring
		}
		if s != w {
			t.Errorf("silent rule after minute %d: %s, want %s (all %v)", i+1, s, w, statusAt[silent.ID])
			break
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		total, byKey := rc.count()
		if total >= 2 || time.Now().After(deadline) {
			break
		}
		_ = byKey
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // room for a duplicate to show up
	total, byKey := rc.count()
	if total != 2 || len(byKey) != 2 {
		t.Fatalf("webhook got %d notifications %v, want one firing and one resolved", total, byKey)
	}
	for k, n := range byKey {
		if n != 1 {
			t.Errorf("notification %s delivered %d times", k, n)
		}
	}
	hist, err := rules.History(ctx, slow.ID, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(hist) != 3 || hist[0].To != alerting.StatusResolved || hist[1].To != alerting.StatusFiring || hist[2].To != alerting.StatusPending {
		t.Errorf("history %+v", hist)
	}
}
