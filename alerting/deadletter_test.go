package alerting_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/deeptrace/deeptrace/alerting"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
)

// TestFailingWebhookEndsInDeadLetter: a webhook that keeps failing gets
// the notification once per retry, then the task is archived (the dead
// letter the asynq monitor lists), and enqueueing the same firing again is
// refused.
func TestFailingWebhookEndsInDeadLetter(t *testing.T) {
	rdb := testenv.Redis(t)
	var calls atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer hook.Close()
	srv := startWorker(rdb)
	defer srv.Shutdown()
	n := alerting.Notification{RuleID: "r1", RuleName: "r", Status: alerting.StatusFiring, Webhook: hook.URL,
		FiringSince: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)}
	task, err := alerting.NewNotifyTask(n, asynq.MaxRetry(2), asynq.Retention(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	client := asynq.NewClientFromRedisClient(rdb)
	if _, err := client.EnqueueContext(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	in := asynq.NewInspectorFromRedisClient(rdb)
	deadline := time.Now().Add(15 * time.Second)
	for {
		archived, _ := in.ListArchivedTasks(jobs.QueueNotify)
		if len(archived) == 1 {
			if archived[0].ID != n.TaskID() || archived[0].LastErr == "" {
				t.Fatalf("archived %+v", archived[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("notification not archived after its retries; webhook called %d times", calls.Load())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if c := calls.Load(); c != 3 {
		t.Errorf("webhook called %d times, want 3 (one try, two retries)", c)
	}
	if _, err := client.EnqueueContext(context.Background(), task); err == nil {
		t.Error("the same firing could be enqueued again")
	}
	evs, err := alerting.NewRules(rdb).History(context.Background(), "r1", 10)
	if err != nil || len(evs) != 1 || !strings.Contains(evs[0].Error, "answered 503 Service Unavailable (after 3 tries)") {
		t.Errorf("history %+v %v, want the undelivered notification after its last try", evs, err)
	}
}
