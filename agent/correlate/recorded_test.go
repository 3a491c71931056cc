package correlate

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/deeptrace/deeptrace/agent/conntrack"
	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/schemas"
)

// recorded is one line of testdata/*.jsonl.gz: what the correlator of one
// service of the demo workload received while it ran at concurrency 32,
// made with `deeptrace eval export-recording`, with the true parent of
// each call from the workload's truth logs.
type recorded struct {
	Span     *schemas.Span       `json:"span"`
	Exchange *protocol.Exchange  `json:"ex"`
	Parent   string              `json:"parent"`
	InFlight *conntrack.InFlight `json:"inflight"`
	Go       *event.GoEvent      `json:"go"`
	Now      int64               `json:"now"`
}

func readRecording(t *testing.T, path string) []recorded {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var out []recorded
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var r recorded
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// replayRecording feeds a recording to a correlator and returns the share
// of calls with a known true parent that got it.
func replayRecording(t *testing.T, rec []recorded, cfg Config, noValues bool) (float64, int) {
	t.Helper()
	got := map[string]string{}
	c, err := New(cfg, func(s schemas.Span) {
		if s.Role == schemas.RoleClient {
			got[s.SpanID] = s.ParentSpanID
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for _, r := range rec {
		switch {
		case r.Span != nil:
			ex := *r.Exchange
			if noValues {
				ex.Values = nil
			}
			if r.Span.Role == schemas.RoleClient && r.Parent != "" {
				want[r.Span.SpanID] = r.Parent
			}
			c.Span(*r.Span, &ex)
		case r.InFlight != nil:
			c.RequestStart(*r.InFlight)
		case r.Go != nil:
			c.GoEvent(*r.Go)
		default:
			c.Advance(r.Now)
		}
	}
	c.Flush()
	right := 0
	for id, p := range want {
		if got[id] == p {
			right++
		}
	}
	return float64(right) / float64(len(want)), len(want)
}

// TestRecorded runs each runtime's recording with every method: ours must
// be right on nearly every call and ahead of both baselines. With the ids
// taken out (what execution context and timing achieve alone) the bounds
// are regression guards at the levels measured.
func TestRecorded(t *testing.T) {
	cases := []struct {
		service, runtime string
		// minimum share of calls right: ours, and ours without ids.
		ours, context float64
	}{
		{"gateway", "Go net/http server, http.Transport and grpc-go clients", 0.99, 0.70},
		{"inventory", "grpc-go server, pgx", 0.99, 0.94},
		{"orders", "Flask under waitress: main thread reads, worker threads call", 0.99, 0.99},
		// Without ids there is nothing to learn asyncio's order of waking
		// from: the context rules are then at chance (see
		// docs/correlation.md).
		{"payments", "aiohttp on asyncio: one thread, tasks woken in order", 0.99, 0.45},
		{"catalog", "Node.js http, one ioredis connection pipelined", 0.99, 0.95},
		{"ledger", "Node.js http, pg pool", 0.99, 0.99},
	}
	for _, tc := range cases {
		t.Run(tc.service, func(t *testing.T) {
			rec := readRecording(t, filepath.Join("testdata", "c32-"+tc.service+".jsonl.gz"))
			acc := map[Method]float64{}
			var n int
			for _, m := range Methods {
				acc[m], n = replayRecording(t, rec, Config{Method: m}, false)
			}
			ctx, _ := replayRecording(t, rec, Config{Method: Ours}, true)
			t.Logf("%s (%s): %d calls: ours %.3f, ours without ids %.3f, thread %.3f, fifo %.3f",
				tc.service, tc.runtime, n, acc[Ours], ctx, acc[Thread], acc[FIFO])
			if acc[Ours] < tc.ours {
				t.Errorf("ours: %.3f of calls right, want >= %.2f", acc[Ours], tc.ours)
			}
			if ctx < tc.context {
				t.Errorf("ours without ids: %.3f of calls right, want >= %.2f", ctx, tc.context)
			}
			for _, b := range []Method{Thread, FIFO} {
				if acc[Ours] < acc[b] {
					t.Errorf("ours %.3f behind %s %.3f", acc[Ours], b, acc[b])
				}
			}
		})
	}
}
