package ops

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"
)

func TestLogger(t *testing.T) {
	var buf bytes.Buffer
	l, err := LoggerTo(&buf, "json", "warn")
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hidden")
	l.Warn("shown", "k", 1)
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("want one JSON record, got %q: %v", buf.String(), err)
	}
	if rec["msg"] != "shown" || rec["level"] != "WARN" || rec["k"] != 1.0 {
		t.Fatalf("record %v", rec)
	}
	buf.Reset()
	l, _ = LoggerTo(&buf, "TEXT", "Debug")
	l.Debug("x")
	if !strings.Contains(buf.String(), "level=DEBUG msg=x") {
		t.Fatalf("text record %q", buf.String())
	}
}

func TestFlagsValidateNamesTheSetting(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{nil, ""},
		{[]string{"--log-format", "xml"}, "log-format"},
		{[]string{"--log-level", "loud"}, "log-level"},
		{[]string{"--ops-listen", "9090"}, "ops-listen"},
		{[]string{"--ops-listen", ":http"}, "ops-listen"},
		{[]string{"--ops-listen", ""}, ""},
		{[]string{"--ops-listen", "0.0.0.0:9090", "--log-format", "text", "--log-level", "error"}, ""},
	}
	for _, c := range cases {
		f := Flags{Listen: ListenWorker}
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		f.Register(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		err := f.Validate()
		if (c.want == "") != (err == nil) || (err != nil && !strings.HasPrefix(err.Error(), c.want)) {
			t.Errorf("%v: error %v, want one starting with %q", c.args, err, c.want)
		}
	}
	var f Flags
	f.Register(pflag.NewFlagSet("t", pflag.ContinueOnError))
	if f.LogFormat != "json" || f.LogLevel != "info" || f.Listen != ListenDefault {
		t.Fatalf("zero defaults: %+v", f)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func TestServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "deeptrace_test_things_total", Help: "things"})
	reg.MustRegister(c)
	c.Add(3)
	var notReady error = errors.New("engine down")
	ready := func(ctx context.Context) error {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("ready called without a deadline")
		}
		return notReady
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeListener(ctx, ln, reg, ready) }()
	base := "http://" + ln.Addr().String()

	if code, body := get(t, base+PathHealthz); code != 200 || body != "ok\n" {
		t.Errorf("healthz: %d %q", code, body)
	}
	if code, body := get(t, base+PathReadyz); code != 503 || !strings.Contains(body, "engine down") {
		t.Errorf("readyz while not ready: %d %q", code, body)
	}
	notReady = nil
	if code, _ := get(t, base+PathReadyz); code != 200 {
		t.Errorf("readyz when ready: %d", code)
	}
	code, body := get(t, base+PathMetrics)
	for _, want := range []string{"deeptrace_test_things_total 3", "go_goroutines", "process_cpu_seconds_total", "go_build_info"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("metrics: %d, no %q", code, want)
		}
	}
	if code, _ := get(t, base+"/nothing"); code != 404 {
		t.Errorf("unknown path: %d", code)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve returned %v after its context ended", err)
		}
	case <-time.After(ShutdownTimeout + time.Second):
		t.Fatal("serve did not return after its context ended")
	}
	if _, err := http.Get(base + PathHealthz); err == nil {
		t.Fatal("endpoint still answers after shutdown")
	}
}

func TestServeErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = Serve(context.Background(), ln.Addr().String(), nil, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "ops-listen "+ln.Addr().String()) {
		t.Fatalf("busy address: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := Serve(ctx, "", nil, nil); err != nil {
		t.Fatalf("disabled endpoint: %v", err)
	}
}
