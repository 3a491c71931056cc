package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/deeptrace/deeptrace/alerting"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
	"github.com/deeptrace/deeptrace/worker/rollup"
)

// webhook is the alert rule's receiver: it records each notification.
type webhook struct {
	mu  sync.Mutex
	got []alerting.Notification
	ids map[string]int
}

func (h *webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var n alerting.Notification
	if err := json.NewDecoder(r.Body).Decode(&n); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.got = append(h.got, n)
	h.ids[r.Header.Get("Idempotency-Key")]++
}

func (h *webhook) notifications() []alerting.Notification {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]alerting.Notification(nil), h.got...)
}

// TestSchedulerAndWorkerRollUpEvaluateAndNotify runs nothing but a plain
// `deeptrace scheduler` and a plain `deeptrace worker`: the spans of the
// last minute are rolled up into RED metrics (one task per shard), the
// alert rule on them is evaluated once the minute is rolled up (one task
// per minute), it fires, and the worker delivers the notification to the
// rule's webhook exactly once.
func TestSchedulerAndWorkerRollUpEvaluateAndNotify(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	// The scheduler's first tick must see the spans' minute as the newest
	// complete one: stay clear of a minute's end.
	for s := time.Now().Second(); s < 5 || s > 40; s = time.Now().Second() {
		time.Sleep(500 * time.Millisecond)
	}
	minute := time.Now().UTC().Truncate(time.Minute).Add(-time.Minute)
	const requests, failed = 30, 3
	var docs []store.Doc
	for i := range requests {
		start := minute.Add(time.Duration(i) * time.Second)
		s := schemas.Span{Role: schemas.RoleServer, Protocol: schemas.ProtocolHTTP1, Operation: "GET /cart", Method: "GET", Path: "/cart",
			StatusCode: 200, StartNs: start.UnixNano(), EndNs: start.Add(time.Duration(i+1) * time.Millisecond).UnixNano(),
			Process: "shop", Service: "shop", Host: "h1", PID: 7,
			Conn: schemas.Conn{ClientIP: "10.0.0.1", ClientPort: uint16(40000 + i), ServerIP: "10.0.0.2", ServerPort: 80}, ReqTCPSeq: uint32(i + 1)}
		if i < failed {
			s.StatusCode, s.Error = 500, true
		}
		s.SpanID = schemas.SpanID(s.Host, s.Conn, 0, s.ReqTCPSeq, s.Role)
		s.Finish()
		s.IngestedAt = time.Now().UTC()
		d, err := store.SpanDoc(e.es.Indices(), &s)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, d)
	}
	if res, err := e.es.Bulk(ctx, docs, "true"); err != nil || len(res.Failed) > 0 {
		t.Fatalf("write spans: %v %v", err, res)
	}

	hook := &webhook{ids: map[string]int{}}
	hs := httptest.NewServer(hook)
	defer hs.Close()
	rule, err := alerting.NewRules(e.rdb).Create(ctx, alerting.Rule{Name: "shop busy", Metric: alerting.MetricCount, Service: "shop",
		Op: ">", Threshold: requests - 1, Webhook: hs.URL})
	if err != nil {
		t.Fatal(err)
	}

	// The receiver is on 127.0.0.1, which a worker refuses by default.
	start(t, "worker", exec.Command(bin, workerArgs(e, "--webhook-allow-local")...))
	start(t, "scheduler", exec.Command(bin, append([]string{"scheduler", "--ops-listen=", "--rollup-shards", "2", "--rollup-lateness", "1s",
		"--rollup-schedule", "@every 1s", "--alert-delay", "2s", "--alert-schedule", "@every 1s"}, append(e.esFlags(""), e.redisFlags()...)...)...))

	waitFor(t, 60*time.Second, "the firing notification", func() bool { return len(hook.notifications()) > 0 })
	n := hook.notifications()[0]
	if n.RuleID != rule.ID || n.Status != alerting.StatusFiring || n.Value == nil || *n.Value != requests {
		t.Fatalf("notification: %+v", n)
	}
	e.es.Refresh(ctx, e.es.Indices().Pattern(schemas.KindMetrics))
	ms, err := rollup.Read(ctx, e.es, minute, minute.Add(time.Minute), rollup.Filter{Services: []string{"shop"}})
	if err != nil {
		t.Fatal(err)
	}
	var svc *schemas.Metric
	for i := range ms {
		if ms[i].Scope == schemas.ScopeService {
			svc = &ms[i]
		}
	}
	if svc == nil || svc.Count != requests || svc.Errors != failed || svc.MaxNs != int64(requests)*int64(time.Millisecond) {
		t.Fatalf("service metrics of %s: %+v", minute, ms)
	}
	// The scheduler named its tasks after their minute: one per shard for
	// the rollup, one for the evaluation.
	in := asynq.NewInspectorFromRedisClient(e.rdb)
	for _, id := range []string{
		rollup.Payload{Minute: minute, Shard: 0, Shards: 2}.TaskID(),
		rollup.Payload{Minute: minute, Shard: 1, Shards: 2}.TaskID(),
		alerting.EvaluatePayload{End: minute.Add(time.Minute)}.TaskID(),
	} {
		info, err := in.GetTaskInfo(jobs.QueueMetrics, id)
		if err != nil {
			t.Errorf("task %s: %v", id, err)
			continue
		}
		if info.State != asynq.TaskStateCompleted {
			t.Errorf("task %s: %s, want completed", id, info.State)
		}
	}
	// Later ticks and evaluations do not notify the same firing again.
	time.Sleep(4 * time.Second)
	if got := hook.notifications(); len(got) != 1 {
		t.Fatalf("%d notifications, want 1: %s", len(got), fmt.Sprint(got))
	}
}
