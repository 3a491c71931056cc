package jobs_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/jobs"
)

func TestParseSpec(t *testing.T) {
	for _, c := range []struct {
		spec string
		ok   bool
	}{
		{"@every 10s", true},
		{"*/5 * * * *", true},
		{"30 */5 * * * *", true},
		{"@hourly", true},
		{"every minute", false},
		{"", false},
		{"* * *", false},
	} {
		err := jobs.ParseSpec(c.spec)
		if (err == nil) != c.ok {
			t.Errorf("%q: %v, want ok %v", c.spec, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), `"`+c.spec+`"`) {
			t.Errorf("%q: error %q does not quote the spec", c.spec, err)
		}
	}
}

// TestRunCron: the first tick runs at once, later ones on the spec, and
// RunCron returns once ctx ends; a bad spec is an error naming it, before
// any tick.
func TestRunCron(t *testing.T) {
	var ticks atomic.Int32
	if err := jobs.RunCron(context.Background(), "every now and then", func() { ticks.Add(1) }); err == nil ||
		!strings.Contains(err.Error(), `"every now and then"`) || ticks.Load() != 0 {
		t.Fatalf("bad spec: err %v, %d ticks", err, ticks.Load())
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- jobs.RunCron(ctx, "@every 1s", func() { ticks.Add(1) }) }()
	deadline := time.Now().Add(5 * time.Second)
	for ticks.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RunCron did not return after its context ended")
	}
	if n := ticks.Load(); n < 2 {
		t.Fatalf("%d ticks in 5s of @every 1s", n)
	}
}
