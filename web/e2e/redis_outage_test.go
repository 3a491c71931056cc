package e2e

import (
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/api"
	"github.com/deeptrace/deeptrace/api/client/clienttest"
	"github.com/deeptrace/deeptrace/internal/testenv"
)

// TestSessionSurvivesRedisOutage: a logged-in user reloads the dashboard
// while the API's Redis is stopped. The session cannot be checked (503),
// so the page says so and keeps asking, instead of showing the login page
// as if the session had ended; once Redis is back the same session opens
// the dashboard with no action from the user.
func TestSessionSurvivesRedisOutage(t *testing.T) {
	b := newBrowser(t)
	rs := testenv.PrivateRedis(t)
	o := &redis.Options{Addr: rs.Addr}
	api.RedisOptions(o)
	rdb := redis.NewClient(o)
	t.Cleanup(func() { rdb.Close() })
	env := clienttest.Start(t, clienttest.Options{Traces: 5, Redis: rdb})
	dir := artifactsDir(t)

	b.do(t, "log in", chromedp.Navigate(env.URL+"/ui/"), visible(`#token`),
		chromedp.SendKeys(chromedp.CSS(`#token`), clienttest.ViewerToken), click(`form button[type=submit]`), visible(`tr[data-trace-id]`))

	rs.Stop()
	b.do(t, "reload with Redis stopped", chromedp.Reload(), visible(`[data-boot=unchecked]`))
	if msg := text(t, b, `[data-boot=unchecked] .error-box`); !strings.Contains(msg, "Redis (sessions) unreachable") {
		t.Fatalf("the page says %q, want the API's reason (Redis (sessions) unreachable)", msg)
	}
	if n := eval[int](t, b, `document.querySelectorAll('#token').length`); n != 0 {
		t.Fatal("the login page is shown while the session cannot be checked")
	}
	b.shot(t, dir, "20-session-unchecked")

	rs.Start()
	b.do(t, "Redis back", visible(`tr[data-trace-id]`))
	if n := eval[int](t, b, `document.querySelectorAll('[data-boot=unchecked]').length`); n != 0 {
		t.Fatal("the outage notice stayed after the session was checked")
	}
	for _, e := range b.errors {
		t.Errorf("page error: %s", e)
	}
}
