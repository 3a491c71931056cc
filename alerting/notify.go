package alerting

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
)

// Notification is the payload of a jobs.TypeNotify task and the JSON body
// the webhook receives. Notification tasks go to jobs.QueueNotify; those
// that exhaust their retries are archived there, the dead letters the
// asynq monitor shows.
type Notification struct {
	RuleID      string        `json:"rule_id"`
	RuleName    string        `json:"rule_name"`
	Status      Status        `json:"status"` // firing or resolved
	Value       *float64      `json:"value"`
	Threshold   float64       `json:"threshold"`
	Metric      Metric        `json:"metric"`
	Op          string        `json:"op"`
	Scope       schemas.Scope `json:"scope"`
	Service     string        `json:"service"`
	Operation   string        `json:"operation,omitempty"`
	Peer        string        `json:"peer,omitempty"`
	FiringSince time.Time     `json:"firing_since"`
	At          time.Time     `json:"at"`
	Webhook     string        `json:"webhook"`
}

// TaskID derives the task id from (rule, firing, status): one firing is
// notified once when it fires and once when it resolves.
func (n Notification) TaskID() string {
	return fmt.Sprintf("alert:%s:%d:%s", n.RuleID, n.FiringSince.UnixNano(), n.Status)
}

// NewNotifyTask builds the task of a notification: retried with backoff up
// to 10 times, then archived.
func NewNotifyTask(n Notification, opts ...asynq.Option) (*asynq.Task, error) {
	if n.RuleID == "" || n.Webhook == "" || n.FiringSince.IsZero() {
		return nil, fmt.Errorf("notification: rule_id, webhook and firing_since are required")
	}
	b, err := json.Marshal(n)
	if err != nil {
		return nil, err
	}
	opts = append([]asynq.Option{asynq.TaskID(n.TaskID()), asynq.Queue(jobs.QueueNotify), asynq.MaxRetry(10),
		asynq.Timeout(30 * time.Second)}, opts...)
	return asynq.NewTask(jobs.TypeNotify, b, opts...), nil
}

// Notifier posts notifications to webhooks. It is an asynq.Handler.
type Notifier struct {
	rdb    redis.UniversalClient
	client *http.Client
}

// NewNotifier builds a notifier; rdb records delivered notifications so a
// task asynq runs again after a crash between delivery and completion is
// not delivered again.
func NewNotifier(rdb redis.UniversalClient) *Notifier {
	return &Notifier{rdb: rdb, client: &http.Client{Timeout: 10 * time.Second}}
}

// Register adds the notification handler to a worker's mux; its server
// must serve jobs.QueueNotify (jobs.Queues has it).
func Register(mux *asynq.ServeMux, n *Notifier) { mux.Handle(jobs.TypeNotify, n) }

// ProcessTask posts one notification. The request carries the task id as
// Idempotency-Key, for receivers that dedupe themselves. A non-2xx answer
// or a network error fails the task, which asynq retries with backoff.
func (n *Notifier) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var msg Notification
	if err := json.Unmarshal(t.Payload(), &msg); err != nil {
		return fmt.Errorf("%w: notification payload: %v", asynq.SkipRetry, err)
	}
	id := msg.TaskID()
	if ok, err := n.rdb.Exists(ctx, keyDelivered+id).Result(); err == nil && ok == 1 {
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, msg.Webhook, bytes.NewReader(t.Payload()))
	if err != nil {
		return fmt.Errorf("%w: webhook %q: %v", asynq.SkipRetry, msg.Webhook, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", id)
	req.Header.Set("User-Agent", "deeptrace-alerting")
	resp, err := n.client.Do(req)
	if err != nil {
		return fmt.Errorf("webhook %s: %w", msg.Webhook, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook %s: answered %s", msg.Webhook, resp.Status)
	}
	if err := n.rdb.Set(context.WithoutCancel(ctx), keyDelivered+id, time.Now().UnixNano(), 30*24*time.Hour).Err(); err != nil {
		// Delivered; only the guard against a repeat is missing.
		return nil
	}
	return nil
}

// RetryDelay backs off exponentially from 1s to 5 minutes.
func RetryDelay(n int, err error, _ *asynq.Task) time.Duration {
	if errors.Is(err, context.Canceled) {
		return time.Second
	}
	return min(time.Second<<min(n, 9), 5*time.Minute)
}
