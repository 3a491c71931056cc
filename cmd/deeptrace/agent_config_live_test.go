package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/api"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// keepAlivePeerEnv makes the test binary TestKeepAlivePeer's process.
const keepAlivePeerEnv = "DEEPTRACE_KEEPALIVE_PEER"

// TestKeepAlivePeer is TestAgentAppliesProtocolsLive's traced process, not
// a test: it serves HTTP and a Redis-speaking (RESP) server on loopback
// and calls both every 20ms, each over one connection it keeps open.
func TestKeepAlivePeer(t *testing.T) {
	if os.Getenv(keepAlivePeerEnv) != "1" {
		t.Skip("the peer TestAgentAppliesProtocolsLive starts in a process of its own")
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go http.Serve(hl, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := rl.Accept()
			if err != nil {
				return
			}
			go func() {
				r := bufio.NewReader(c)
				for {
					// *2 $3 GET $1 k: five lines per command.
					for range 5 {
						if _, err := r.ReadString('\n'); err != nil {
							return
						}
					}
					io.WriteString(c, "$1\r\nv\r\n")
				}
			}()
		}
	}()
	rc, err := net.Dial("tcp", rl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	rr := bufio.NewReader(rc)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	fmt.Println("READY")
	for i := 0; ; i++ {
		res, err := client.Get(fmt.Sprintf("http://%s/tick/%d", hl.Addr(), i))
		if err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		io.WriteString(rc, "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
		rr.ReadString('\n')
		rr.ReadString('\n')
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAgentAppliesProtocolsLive runs the agent binary with eBPF on a
// process that talks HTTP and Redis over connections it keeps open, with
// its configuration from the real API: an admin changes the protocols to
// parse, twice, and each time the running agent's spans in the engine
// follow within seconds, on the same connections, without a restart.
func TestAgentAppliesProtocolsLive(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary with eBPF")
	}
	if os.Geteuid() != 0 {
		t.Skip("the agent's capture needs root (CAP_BPF, CAP_PERFMON)")
	}
	st := testenv.Store(t)
	h := api.HashToken("admin-secret")
	admin, err := api.ParseTokenSpec("admin:admin:" + hex.EncodeToString(h[:]))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := api.New(api.Config{Tokens: []api.TokenSpec{admin}},
		api.Deps{Store: st, Redis: testenv.Redis(t), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	cfgURL := hs.URL + "/api/v1/config/agent"
	put := func(body string) {
		t.Helper()
		req, _ := http.NewRequest("PUT", cfgURL, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer admin-secret")
		req.Header.Set("Content-Type", "application/json")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("put %s: %s %s", body, res.Status, b)
		}
	}
	put(`{}`)

	bin := sigtermBinary(t)
	peer, line := startPeer(t, "TestKeepAlivePeer", keepAlivePeerEnv+"=1")
	if !strings.HasPrefix(line, "READY") {
		t.Fatalf("peer: %q", line)
	}

	const host = "livecfg"
	stderr := &syncBuffer{}
	agent := exec.Command(bin, "agent", "--pid", strconv.Itoa(peer.Process.Pid), "--host", host,
		"--es-url", testenv.ESURL(), "--es-engine", string(testenv.ESEngine()), "--es-prefix", st.Indices().Prefix,
		"--spool-dir", t.TempDir(), "--ops-listen=", "--log-format", "text",
		"--config-url", cfgURL, "--config-token", "admin-secret", "--config-poll", "100ms", "--config-wait", "5s",
		"--config-state", filepath.Join(t.TempDir(), "agent-config.json"))
	agent.Stderr = stderr
	agent.Env = append(os.Environ(), "DEEPTRACE_CONFIG=")
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait() }()
	t.Cleanup(func() { agent.Process.Kill() })
	applied := func(version int) bool {
		return regexp.MustCompile(`applied configuration.* version=` + strconv.Itoa(version) + `\b`).MatchString(stderr.String())
	}
	for deadline := time.Now().Add(30 * time.Second); !applied(1); time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-exited:
			if strings.Contains(stderr.String(), "privilege") {
				t.Skipf("the agent cannot load eBPF here: %s", stderr.String())
			}
			t.Fatalf("agent exited: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not attach and apply configuration 1 in 30s\n%s", stderr.String())
		}
	}

	ctx := context.Background()
	// count counts the agent's spans of a protocol that started after
	// from.
	count := func(p schemas.Protocol, from time.Time) int64 {
		st.Refresh(ctx, st.Indices().Pattern(schemas.KindSpans))
		n, err := st.Count(ctx, store.Query{Kind: schemas.KindSpans, From: from, To: time.Now().Add(time.Hour),
			Terms: map[string][]any{"host": {host}, "protocol": {string(p)}}})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// phase waits for the configuration version, lets what was captured
	// before it drain, and counts each protocol's spans over 3 seconds.
	phase := func(version int) (http1, redis int64) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !applied(version); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("configuration %d not applied in 20s\n%s", version, stderr.String())
			}
		}
		from := time.Now().Add(time.Second)
		time.Sleep(4 * time.Second)
		return count(schemas.ProtocolHTTP1, from), count(schemas.ProtocolRedis, from)
	}

	// Version 1, every protocol.
	start := time.Now()
	for deadline := time.Now().Add(20 * time.Second); count(schemas.ProtocolHTTP1, start) < 20 || count(schemas.ProtocolRedis, start) < 20; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no spans of both protocols: http1 %d, redis %d\n%s", count(schemas.ProtocolHTTP1, start), count(schemas.ProtocolRedis, start), stderr.String())
		}
	}

	put(`{"protocols":["http1"]}`)
	nh, nr := phase(2)
	t.Logf("protocols [http1]: %d http1 and %d redis spans in 3s", nh, nr)
	if nh < 20 || nr != 0 {
		t.Errorf("protocols [http1]: want many http1 spans and no redis span")
	}
	put(`{"protocols":["redis"]}`)
	nh, nr = phase(3)
	t.Logf("protocols [redis]: %d http1 and %d redis spans in 3s", nh, nr)
	if nh != 0 || nr < 20 {
		t.Errorf("protocols [redis]: want no http1 span and many redis spans")
	}
	if t.Failed() {
		t.Logf("agent log:\n%s", stderr.String())
	}
}
