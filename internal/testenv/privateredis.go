package testenv

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// PrivateRedisServer is a redis-server of the test's own, which it may stop and
// start again on the same port. It saves its data when stopped (SIGTERM
// with a save point) and loads it when started, as a production Redis with
// persistence does, so sessions and tokens outlive the restart.
type PrivateRedisServer struct {
	t    testing.TB
	bin  string
	conf string
	Addr string
	cmd  *exec.Cmd
	done chan struct{}
}

// PrivateRedis starts a redis-server of the test's own on a free loopback
// port (skipping when none is installed), stopped when the test ends.
func PrivateRedis(t testing.TB) *PrivateRedisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		unavailable(t, "redis-server (scripts/engines.sh installs it)", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	conf := filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(conf, []byte(strings.Join([]string{
		"port " + strconv.Itoa(port), "bind 127.0.0.1", "save 3600 1", "appendonly no",
		"dir " + dir, "logfile " + filepath.Join(dir, "redis.log"),
	}, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := &PrivateRedisServer{t: t, bin: bin, conf: conf, Addr: "127.0.0.1:" + strconv.Itoa(port)}
	r.Start()
	t.Cleanup(func() {
		if r.cmd != nil {
			r.cmd.Process.Kill()
			<-r.done
		}
	})
	return r
}

// Start runs the server and waits until it answers PING.
func (r *PrivateRedisServer) Start() {
	r.t.Helper()
	r.cmd = exec.Command(r.bin, r.conf)
	if err := r.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.done = make(chan struct{})
	go func() { r.cmd.Wait(); close(r.done) }()
	c := redis.NewClient(&redis.Options{Addr: r.Addr, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			r.t.Fatalf("private redis-server at %s does not answer", r.Addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop ends the server (it saves its data first) and waits for it.
func (r *PrivateRedisServer) Stop() {
	r.t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		r.t.Fatal(err)
	}
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		r.t.Fatal("redis-server did not stop within 10s")
	}
	r.cmd = nil
}

// Freeze stops the server with SIGSTOP: the kernel still accepts
// connections and takes requests, and nothing answers, as when a host is
// gone or partitioned. Thaw lets it go on.
func (r *PrivateRedisServer) Freeze() { r.signal(syscall.SIGSTOP) }
func (r *PrivateRedisServer) Thaw()   { r.signal(syscall.SIGCONT) }

func (r *PrivateRedisServer) signal(sig syscall.Signal) {
	r.t.Helper()
	if err := r.cmd.Process.Signal(sig); err != nil {
		r.t.Fatal(err)
	}
}
