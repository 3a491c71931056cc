package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c" //lint:ignore SA1019 see the h2c-upgrade scenario
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

func init() {
	scenarios["http1"] = func() (string, func(context.Context, string) error, func()) {
		addr, stop := serveHTTP(false)
		return addr, runHTTP1, stop
	}
	scenarios["h2c"] = func() (string, func(context.Context, string) error, func()) {
		addr, stop := serveHTTP(true)
		return addr, runH2C, stop
	}
	scenarios["h2c-upgrade"] = func() (string, func(context.Context, string) error, func()) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		// net/http's own h2c is prior knowledge only; x/net's deprecated
		// h2c handler is what still answers "Upgrade: h2c", as older
		// servers do.
		srv := &http.Server{Handler: h2c.NewHandler(handler(), &http2.Server{})} //lint:ignore SA1019 the upgrade needs it
		go srv.Serve(ln)
		return ln.Addr().String(), runCurlUpgrade, func() { srv.Close() }
	}
	scenarios["grpc"] = func() (string, func(context.Context, string) error, func()) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		srv := grpc.NewServer()
		hs := health.NewServer()
		hs.SetServingStatus("users.v1.Users", healthpb.HealthCheckResponse_SERVING)
		healthpb.RegisterHealthServer(srv, hs)
		go srv.Serve(ln)
		return ln.Addr().String(), runGRPC, srv.Stop
	}
}

func handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /users/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":%q,"name":"ada"}`, r.PathValue("id"))
	})
	mux.HandleFunc("POST /orders", func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"received":%d}`, n)
	})
	mux.HandleFunc("GET /big", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "300000")
		w.Write([]byte(strings.Repeat("x", 300000)))
	})
	mux.HandleFunc("GET /stream", func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i < 5; i++ {
			fmt.Fprintf(w, "part %d %s\n", i, strings.Repeat("y", 3000))
			w.(http.Flusher).Flush()
		}
	})
	mux.HandleFunc("GET /fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	})
	return mux
}

func serveHTTP(h2c bool) (string, func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := &http.Server{Handler: handler()}
	if h2c {
		srv.Protocols = new(http.Protocols)
		srv.Protocols.SetUnencryptedHTTP2(true)
		srv.Protocols.SetHTTP1(true)
	}
	go srv.Serve(ln)
	return ln.Addr().String(), func() { srv.Close() }
}

func do(c *http.Client, req *http.Request) error {
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return err
}

func runHTTP1(ctx context.Context, addr string) error {
	// One keep-alive connection for the client's requests.
	tr := &http.Transport{MaxConnsPerHost: 1, DisableCompression: true}
	c := &http.Client{Transport: tr}
	base := "http://" + addr
	get := func(path string) error {
		req, _ := http.NewRequestWithContext(ctx, "GET", base+path, nil)
		return do(c, req)
	}
	for _, p := range []string{"/users/42?expand=orders&trace=abc123", "/missing", "/fail", "/big", "/stream"} {
		if err := get(p); err != nil {
			return err
		}
	}
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/orders", strings.NewReader(`{"user":42,"item":"book-9781"}`))
	req.Header.Set("Content-Type", "application/json")
	if err := do(c, req); err != nil {
		return err
	}
	// Chunked request body: unknown length.
	pr, pw := io.Pipe()
	go func() {
		for i := 0; i < 3; i++ {
			fmt.Fprintf(pw, "line %d\n", i)
			time.Sleep(5 * time.Millisecond)
		}
		pw.Close()
	}()
	req, _ = http.NewRequestWithContext(ctx, "POST", base+"/orders", pr)
	if err := do(c, req); err != nil {
		return err
	}
	// Expect: 100-continue.
	tr.ExpectContinueTimeout = time.Second
	req, _ = http.NewRequestWithContext(ctx, "POST", base+"/orders", strings.NewReader(strings.Repeat("z", 5000)))
	req.Header.Set("Expect", "100-continue")
	if err := do(c, req); err != nil {
		return err
	}
	req, _ = http.NewRequestWithContext(ctx, "HEAD", base+"/big", nil)
	if err := do(c, req); err != nil {
		return err
	}
	tr.CloseIdleConnections()

	// Pipelining and HTTP/1.0, which net/http's client does not do:
	// written by hand, answered by the real server.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	pipelined := "GET /users/1 HTTP/1.1\r\nHost: api\r\n\r\n" +
		"GET /users/2 HTTP/1.1\r\nHost: api\r\n\r\n" +
		"POST /orders HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\nhello" +
		"GET /users/3 HTTP/1.1\r\nHost: api\r\n\r\n"
	if _, err := conn.Write([]byte(pipelined)); err != nil {
		return err
	}
	br := bufio.NewReader(conn)
	for i := 0; i < 4; i++ {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	conn2, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn2.Close()
	if _, err := conn2.Write([]byte("GET /users/7 HTTP/1.0\r\n\r\n")); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, conn2)
	return err
}

func runH2C(ctx context.Context, addr string) error {
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	c := &http.Client{Transport: tr}
	base := "http://" + addr
	// Concurrent requests on the one connection: multiplexed streams.
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i, p := range []string{"/users/42?expand=orders", "/big", "/missing", "/stream", "/users/7", "/fail"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * time.Millisecond)
			req, _ := http.NewRequestWithContext(ctx, "GET", base+p, nil)
			errs <- do(c, req)
		}()
	}
	wg.Wait()
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/orders", strings.NewReader(strings.Repeat("o", 40000)))
	errs <- do(c, req)
	// Same request again: HPACK dynamic table hits.
	req, _ = http.NewRequestWithContext(ctx, "GET", base+"/users/42?expand=orders", nil)
	errs <- do(c, req)
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	tr.CloseIdleConnections()
	return nil
}

// runCurlUpgrade has curl upgrade an HTTP/1.1 request to h2c, then send a
// second request on the same connection as an HTTP/2 stream.
func runCurlUpgrade(ctx context.Context, addr string) error {
	out, err := exec.CommandContext(ctx, "curl", "-sS", "--http2", "-o", "/dev/null", "-o", "/dev/null",
		"http://"+addr+"/users/42?via=upgrade", "http://"+addr+"/missing").CombinedOutput()
	if err != nil {
		return fmt.Errorf("curl: %v: %s", err, out)
	}
	return nil
}

func runGRPC(ctx context.Context, addr string) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "users.v1.Users"}); err != nil {
		return err
	}
	// Unknown service: NOT_FOUND in a Trailers-Only response.
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"}); status.Code(err) != codes.NotFound {
		return fmt.Errorf("want NotFound, got %v", err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "users.v1.Users"})
		}()
	}
	wg.Wait()
	// A method the server does not have: UNIMPLEMENTED.
	err = cc.Invoke(ctx, "/users.v1.Users/GetUser", &healthpb.HealthCheckRequest{Service: "42"}, new(healthpb.HealthCheckResponse))
	if status.Code(err) != codes.Unimplemented {
		return fmt.Errorf("want Unimplemented, got %v", err)
	}
	// A server stream the client cancels: RST_STREAM.
	wctx, cancel := context.WithCancel(ctx)
	w, err := hc.Watch(wctx, &healthpb.HealthCheckRequest{Service: "users.v1.Users"})
	if err != nil {
		cancel()
		return err
	}
	if _, err := w.Recv(); err != nil {
		cancel()
		return err
	}
	cancel()
	time.Sleep(50 * time.Millisecond)
	_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "users.v1.Users"})
	return err
}
