package alerting

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
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

// NotifierConfig configures a Notifier; the zero value refuses local
// destinations.
type NotifierConfig struct {
	// AllowLocal lets webhooks reach loopback, link-local and unspecified
	// addresses, which a worker refuses otherwise: a rule's author must
	// not aim a worker, which holds the engine's and Redis' credentials,
	// at the cloud metadata service (169.254.169.254) or at its own
	// node's ports. Tests and local demos with a receiver on 127.0.0.1
	// set it. Private (RFC 1918) addresses are not refused: in-cluster
	// receivers live there; the network policy of the deployment decides.
	AllowLocal bool
	// HistoryMax caps the history list, where an undelivered notification
	// is recorded (10000, as the evaluator's).
	HistoryMax int64
}

// Notifier posts notifications to webhooks. It is an asynq.Handler.
type Notifier struct {
	cfg    NotifierConfig
	rdb    redis.UniversalClient
	client *http.Client
}

// NewNotifier builds a notifier; rdb records delivered notifications so a
// task asynq runs again after a crash between delivery and completion is
// not delivered again, and records in the history the notifications
// that will not be delivered.
func NewNotifier(cfg NotifierConfig, rdb redis.UniversalClient) *Notifier {
	if cfg.HistoryMax == 0 {
		cfg.HistoryMax = defaultHistoryMax
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if !cfg.AllowLocal {
		d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second, Control: refuseLocal}
		tr.DialContext = d.DialContext
	}
	return &Notifier{cfg: cfg, rdb: rdb, client: &http.Client{Timeout: 10 * time.Second, Transport: tr}}
}

// ErrDestinationRefused is why a webhook's address is refused (see
// NotifierConfig.AllowLocal). A refused notification is not retried.
var ErrDestinationRefused = errors.New("destination refused")

// refuseLocal is the webhook dialer's Control: it sees each address after
// name resolution, so neither a name that resolves to a local address nor
// a redirect to one gets through.
func refuseLocal(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %q is not an IP address and port", ErrDestinationRefused, address)
	}
	return checkDestination(ap.Addr())
}

// checkDestination refuses loopback, link-local and unspecified
// addresses, IPv4 ones mapped into IPv6 too.
func checkDestination(a netip.Addr) error {
	a = a.Unmap()
	var what string
	switch {
	case a.IsLoopback():
		what = "a loopback address"
	case a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast():
		what = "a link-local address (the cloud metadata service is one)"
	case a.IsUnspecified():
		what = "the unspecified address"
	default:
		return nil
	}
	return fmt.Errorf("%w: %s is %s; a worker started with --webhook-allow-local reaches it", ErrDestinationRefused, a, what)
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
		return n.undelivered(ctx, msg, fmt.Errorf("%w: webhook %q: %v", asynq.SkipRetry, msg.Webhook, err))
	}
	if ip, err := netip.ParseAddr(strings.Trim(req.URL.Hostname(), "[]")); err == nil && !n.cfg.AllowLocal {
		// Checked here too for a proxy (HTTPS_PROXY), whose dial is the
		// only one the dialer sees.
		if err := checkDestination(ip); err != nil {
			return n.undelivered(ctx, msg, fmt.Errorf("%w: webhook %s: %v", asynq.SkipRetry, msg.Webhook, err))
		}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", id)
	req.Header.Set("User-Agent", "deeptrace-alerting")
	resp, err := n.client.Do(req)
	if errors.Is(err, ErrDestinationRefused) {
		return n.undelivered(ctx, msg, fmt.Errorf("%w: webhook %s: %w", asynq.SkipRetry, msg.Webhook, err))
	}
	if err != nil {
		return n.lastTry(ctx, msg, fmt.Errorf("webhook %s: %w", msg.Webhook, err))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return n.lastTry(ctx, msg, fmt.Errorf("webhook %s: answered %s", msg.Webhook, resp.Status))
	}
	if err := n.rdb.Set(context.WithoutCancel(ctx), keyDelivered+id, time.Now().UnixNano(), 30*24*time.Hour).Err(); err != nil {
		// Delivered; only the guard against a repeat is missing.
		return nil
	}
	return nil
}

// lastTry records err in the history when asynq will not retry the task
// again (it archives it), and returns err.
func (n *Notifier) lastTry(ctx context.Context, msg Notification, err error) error {
	retried, ok1 := asynq.GetRetryCount(ctx)
	maxRetry, ok2 := asynq.GetMaxRetry(ctx)
	if ok1 && ok2 && retried >= maxRetry && ctx.Err() == nil {
		return n.undelivered(ctx, msg, fmt.Errorf("%w (after %d tries)", err, retried+1))
	}
	return err
}

// undelivered records in the history that msg will not be delivered, and
// why, and returns err. The entry is the notified transition's, with
// Error set.
func (n *Notifier) undelivered(ctx context.Context, msg Notification, err error) error {
	ev := Event{RuleID: msg.RuleID, RuleName: msg.RuleName, From: msg.Status, To: msg.Status, At: time.Now().UTC(),
		Value: msg.Value, Threshold: msg.Threshold, FiringSince: msg.FiringSince,
		Error: "notification not delivered: " + strings.TrimPrefix(err.Error(), asynq.SkipRetry.Error()+": ")}
	b, _ := json.Marshal(ev)
	pipe := n.rdb.TxPipeline()
	pipe.LPush(context.WithoutCancel(ctx), keyHistory, b)
	pipe.LTrim(context.WithoutCancel(ctx), keyHistory, 0, n.cfg.HistoryMax-1)
	_, _ = pipe.Exec(context.WithoutCancel(ctx)) // the archived task keeps the error too
	return err
}

// RetryDelay backs off exponentially from 1s to 5 minutes.
func RetryDelay(n int, err error, _ *asynq.Task) time.Duration {
	if errors.Is(err, context.Canceled) {
		return time.Second
	}
	return min(time.Second<<min(n, 9), 5*time.Minute)
}
