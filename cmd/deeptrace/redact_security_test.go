package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/testenv"
)

// The secrets the traced peer sends; none may reach Elasticsearch.
const (
	secretBearer = "s3cr3t-token-XYZ"
	secretCookie = "s3cr3t-cookie-XYZ"
	secretQuery  = "s3cr3t-query-XYZ"
	secretForm   = "s3cr3t-form-XYZ"
	secretRedis  = "s3cr3t-redis-XYZ"
)

// secretPeerEnv makes the test binary the traced peer (TestSecretPeer).
const secretPeerEnv = "DEEPTRACE_SECRET_PEER"

// TestSecretPeer is TestSecretsNeverReachES's traced process, not a test:
// it serves /front, which authenticates to Redis (AUTH, HELLO AUTH), uses
// it, and calls its own /back with an Authorization header and a cookie.
func TestSecretPeer(t *testing.T) {
	redisAddr := os.Getenv(secretPeerEnv)
	if redisAddr == "" {
		t.Skip("the peer TestSecretsNeverReachES starts in a process of its own")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	fmt.Println(ln.Addr().String())
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/back" {
			io.Copy(io.Discard, r.Body)
			io.WriteString(w, "back ok")
			return
		}
		if err := redisSession(redisAddr); err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		req, _ := http.NewRequest("POST", base+"/back?password="+secretQuery, strings.NewReader("user=bob&password="+secretForm))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", "Bearer "+secretBearer)
		req.Header.Set("Cookie", "session="+secretCookie)
		res, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		io.WriteString(w, "front ok")
	}))
}

// redisSession authenticates to Redis both ways and uses the connection.
func redisSession(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	rd := bufio.NewReader(c)
	for _, cmd := range [][]string{
		{"AUTH", secretRedis},
		{"HELLO", "2", "AUTH", "default", secretRedis},
		{"SET", "secret:test", "value-1"},
		{"GET", "secret:test"},
	} {
		var b bytes.Buffer
		fmt.Fprintf(&b, "*%d\r\n", len(cmd))
		for _, a := range cmd {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
		if _, err := c.Write(b.Bytes()); err != nil {
			return err
		}
		line, err := rd.ReadString('\n')
		if err != nil {
			return err
		}
		if strings.HasPrefix(line, "-") {
			return fmt.Errorf("redis %s: %s", cmd[0], line)
		}
		if cmd[0] == "HELLO" {
			// A RESP2 map reply: *N then N bulk or simple lines; read them.
			n, _ := strconv.Atoi(strings.TrimSpace(line[1:]))
			for range n {
				l, err := rd.ReadString('\n')
				if err != nil {
					return err
				}
				if strings.HasPrefix(l, "$") {
					if _, err := rd.ReadString('\n'); err != nil {
						return err
					}
				} else if strings.HasPrefix(l, "*") {
					m, _ := strconv.Atoi(strings.TrimSpace(l[1:]))
					for range m {
						rd.ReadString('\n')
						rd.ReadString('\n')
					}
				}
			}
		}
		if strings.HasPrefix(line, "$") && !strings.HasPrefix(line, "$-1") {
			if _, err := rd.ReadString('\n'); err != nil {
				return err
			}
		}
	}
	return nil
}

// startSecretRedis starts a redis-server of the test's own that requires
// secretRedis.
func startSecretRedis(t *testing.T) string {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skipf("redis-server not installed: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--requirepass", secretRedis,
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s did not start", addr)
		}
	}
}

// TestSecretsNeverReachES runs the agent with eBPF and its default engine
// output on a peer that sends an Authorization header, a session cookie,
// password and token parameters, and authenticates to a real Redis with
// AUTH and HELLO AUTH; then it reads every document stored under the
// agent's index prefix and requires that no secret appears in any byte.
func TestSecretsNeverReachES(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary with eBPF")
	}
	st := testenv.Store(t)
	redisAddr := startSecretRedis(t)
	bin := sigtermBinary(t)

	peer, addr := startPeer(t, "TestSecretPeer", secretPeerEnv+"="+redisAddr)
	front := "http://" + addr + "/front"

	stderr := &syncBuffer{}
	agent := exec.Command(bin, "agent", "--pid", strconv.Itoa(peer.Process.Pid), "--host", "secrets",
		"--es-url", testenv.ESURL(), "--es-engine", string(testenv.ESEngine()), "--es-prefix", st.Indices().Prefix,
		"--spool-dir", t.TempDir(), "--ops-listen", "127.0.0.1:0", "--log-format", "text")
	agent.Stderr = stderr
	agent.Env = append(os.Environ(), "DEEPTRACE_CONFIG=")
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait() }()
	t.Cleanup(func() { agent.Process.Kill() })
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(stderr.String(), "capture attached"); time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-exited:
			if strings.Contains(stderr.String(), "privilege") {
				t.Skipf("the agent cannot load eBPF here: %s", stderr.String())
			}
			t.Fatalf("agent exited before it attached: %v\n%s", err, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not attached after 30s\n%s", stderr.String())
		}
	}

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	const requests = 5
	for i := range requests {
		req, _ := http.NewRequest("GET", fmt.Sprintf("%s?i=%d&token=%s", front, i, secretQuery), nil)
		req.Header.Set("Authorization", "Bearer "+secretBearer)
		req.Header.Set("Cookie", "session="+secretCookie)
		res, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Fatalf("peer /front: %s %s", res.Status, body)
		}
	}
	time.Sleep(500 * time.Millisecond)
	agent.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("agent after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("agent still running 30s after SIGTERM\n%s", stderr.String())
	}

	// Every document under the prefix, raw.
	es := st.Client()
	pattern := st.Indices().Prefix + "*"
	if res, err := es.Indices.Refresh(es.Indices.Refresh.WithIndex(pattern)); err == nil {
		res.Body.Close()
	}
	res, err := es.Search(es.Search.WithContext(context.Background()), es.Search.WithIndex(pattern),
		es.Search.WithSize(10000), es.Search.WithBody(strings.NewReader(`{"query":{"match_all":{}}}`)))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.IsError() {
		t.Fatalf("search %s: %s %s", pattern, res.Status(), raw)
	}
	for _, s := range []string{secretBearer, secretCookie, secretQuery, secretForm, secretRedis} {
		if i := bytes.Index(raw, []byte(s)); i >= 0 {
			lo, hi := max(0, i-300), min(len(raw), i+100)
			t.Errorf("secret %q reached Elasticsearch: …%s…", s, raw[lo:hi])
		}
	}
	// Not vacuous: the exchanges that carried the secrets are there.
	for _, want := range []string{`"operation":"GET /front"`, `"operation":"POST /back"`, `"operation":"AUTH`, `"operation":"HELLO`, `"operation":"SET`} {
		if !bytes.Contains(raw, []byte(want)) {
			t.Errorf("no span with %s stored (the test would prove nothing)\n%s", want, truncateBytes(raw, 3000))
		}
	}
	t.Logf("%d bytes of stored documents under %s, no secret in them", len(raw), pattern)
}

func truncateBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
