package alerting_test

import (
	"context"
	"net"
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

// TestWebhookToLocalAddressRefused: a rule's webhook on a loopback,
// link-local (the cloud metadata service) or unspecified address, given
// as an address or as a name that resolves to one, is never called by a
// worker that does not allow local destinations: the task is archived at
// once, not retried, and the rule's history says why.
func TestWebhookToLocalAddressRefused(t *testing.T) {
	rdb := testenv.Redis(t)
	var calls atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { calls.Add(1) }))
	defer hook.Close()
	_, port, _ := net.SplitHostPort(hook.Listener.Addr().String())
	srv := startNotifier(rdb, alerting.NotifierConfig{})
	defer srv.Shutdown()
	ctx := context.Background()
	client := asynq.NewClientFromRedisClient(rdb)
	cases := []struct{ url, want string }{
		{hook.URL + "/x", "127.0.0.1 is a loopback address"},
		{"http://localhost:" + port + "/x", "is a loopback address"}, // refused when dialled
		{"http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"},
		{"http://[::1]:" + port + "/x", "::1 is a loopback address"},
		{"http://0.0.0.0:" + port + "/x", "0.0.0.0 is the unspecified address"},
	}
	ids := make([]string, len(cases))
	for i, c := range cases {
		n := alerting.Notification{RuleID: "r" + string(rune('a'+i)), RuleName: "refused", Status: alerting.StatusFiring,
			Webhook: c.url, FiringSince: time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)}
		task, err := alerting.NewNotifyTask(n, asynq.Retention(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.EnqueueContext(ctx, task); err != nil {
			t.Fatal(err)
		}
		ids[i] = n.TaskID()
	}
	in := asynq.NewInspectorFromRedisClient(rdb)
	rules := alerting.NewRules(rdb)
	for i, c := range cases {
		deadline := time.Now().Add(10 * time.Second)
		for {
			info, err := in.GetTaskInfo(jobs.QueueNotify, ids[i])
			if err == nil && info.State == asynq.TaskStateArchived {
				if info.Retried != 0 || !strings.Contains(info.LastErr, c.want) {
					t.Errorf("%s: archived after %d retries, last error %q; want at once, with %q", c.url, info.Retried, info.LastErr, c.want)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not archived: %+v %v", c.url, info, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		evs, err := rules.History(ctx, "r"+string(rune('a'+i)), 10)
		if err != nil || len(evs) != 1 || !strings.HasPrefix(evs[0].Error, "notification not delivered: webhook "+c.url) ||
			!strings.Contains(evs[0].Error, c.want) || evs[0].To != alerting.StatusFiring {
			t.Errorf("%s: history %+v %v, want the undelivered notification and why", c.url, evs, err)
		}
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("local webhook called %d times", n)
	}
}
