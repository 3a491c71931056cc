package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/deeptrace/deeptrace/internal/redisconn"
	"github.com/deeptrace/deeptrace/internal/redisconn/redisconntest"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
)

// TestRedisTLS runs the scheduler, a worker and the API (with its asynq
// monitor) against a real redis-server that speaks only TLS, wants client
// certificates and an ACL user: the scheduler's tasks reach the worker,
// which assembles them; the API is ready and its monitor lists the
// queues. A client with the wrong CA, or without TLS, is refused with an
// error that says so.
func TestRedisTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	srv := redisconntest.Start(t, true)
	bin := sigtermBinary(t)
	st := testenv.Store(t)
	tlsArgs := []string{"--redis-addr", srv.Addr, "--redis-db", "1", "--redis-ca-cert", srv.CAFile,
		"--redis-client-cert", srv.CertFile, "--redis-client-key", srv.KeyFile, "--redis-tls-server-name", srv.ServerName,
		"--redis-username", redisconntest.User}
	esArgs := []string{"--es-url", testenv.ESURL(), "--es-engine", string(testenv.ESEngine()), "--es-prefix", st.Indices().Prefix}
	// The password comes from the environment, as a deployment should
	// give it.
	env := []string{"DEEPTRACE_CONFIG=", "DEEPTRACE_REDIS_PASSWORD=" + redisconntest.UserPassword}

	start := func(name string, args ...string) *syncBuffer {
		out := &syncBuffer{}
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-done })
		return out
	}
	sched := start("scheduler", append(append([]string{"scheduler", "--ops-listen=", "--no-late-check", "--window", "1s",
		"--lateness", "1s", "--margin", "500ms", "--shards", "1", "--schedule", "@every 1s"}, tlsArgs...), esArgs...)...)
	work := start("worker", append(append([]string{"worker", "--ops-listen=", "--concurrency", "2"}, tlsArgs...), esArgs...)...)
	apiAddr := freeAddr(t)
	api := start("api", append(append([]string{"api", "--listen", apiAddr,
		"--token", fmt.Sprintf("tls:viewer:%x", sha256.Sum256([]byte("tls-token")))}, tlsArgs...), esArgs...)...)

	// The test reads Redis the same way, over TLS as the ACL user.
	cfg := redisconn.Config{Addr: srv.Addr, DB: 1, CAFile: srv.CAFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile,
		ServerName: srv.ServerName, Username: redisconntest.User, Password: redisconntest.UserPassword}
	rdb, err := cfg.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	state := jobs.NewState(rdb)
	logs := func() string {
		return fmt.Sprintf("scheduler:\n%s\nworker:\n%s\napi:\n%s", sched.String(), work.String(), api.String())
	}
	deadline := time.Now().Add(30 * time.Second)
	var assembled int
	for assembled < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("after 30s %d windows assembled over TLS, want 3\n%s", assembled, logs())
		}
		time.Sleep(200 * time.Millisecond)
		wm, ok, err := state.Watermark(context.Background())
		if err != nil || !ok {
			continue
		}
		assembled = 0
		for ws := wm.Add(-10 * time.Second); ws.Before(wm); ws = ws.Add(time.Second) {
			if done, err := state.Assembled(context.Background(), ws, 1); err == nil && len(done) == 1 {
				assembled++
			}
		}
	}
	info, err := asynq.NewInspectorFromRedisClient(rdb).GetQueueInfo(jobs.QueueLive)
	if err != nil || info.Processed == 0 {
		t.Fatalf("live queue over TLS: %+v %v", info, err)
	}

	get := func(path string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+apiAddr+path, nil)
		req.Header.Set("Authorization", "Bearer tls-token")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	var status int
	var body string
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if status, body = get("/readyz"); status == http.StatusOK {
			break
		}
	}
	if status != http.StatusOK {
		t.Fatalf("API readyz over TLS: %d %s\n%s", status, body, logs())
	}
	status, body = get("/monitor/api/queues")
	var queues struct {
		Queues []struct {
			Queue string `json:"queue"`
		} `json:"queues"`
	}
	if status != http.StatusOK || json.Unmarshal([]byte(body), &queues) != nil || len(queues.Queues) == 0 {
		t.Fatalf("asynq monitor over TLS: %d %s", status, body)
	}

	// Refused: a client that trusts another CA, and one without TLS.
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"another CA", []string{"--redis-ca-cert", srv.OtherCAFile, "--redis-client-cert", srv.CertFile, "--redis-client-key", srv.KeyFile,
			"--redis-username", redisconntest.User}, "certificate signed by unknown authority"},
		{"no TLS", []string{"--redis-username", redisconntest.User}, "redis-addr " + srv.Addr},
	} {
		cmd := exec.Command(bin, append(append([]string{"scheduler", "--ops-listen=", "--no-late-check", "--redis-addr", srv.Addr}, c.args...), esArgs...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("scheduler with %s: %v, output %s; want a failure saying %q", c.name, err, out, c.want)
		}
	}
}

// freeAddr is a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
