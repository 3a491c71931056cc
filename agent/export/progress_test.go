package export_test

import (
	"context"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/agent/export"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// Every progress report vouches only for spans that are searchable: at
// any moment, the spans stored with a start before the reported
// watermark are all the spans added with such a start, through an engine
// outage (spans spooled, the watermark held) and after it. An exporter
// that stops says so.
func TestProgressReportsVouchForSearchableSpans(t *testing.T) {
	st := testenv.Store(t)
	px := newCutProxy(t, strings.TrimPrefix(testenv.ESURL(), "http://"))
	via, err := store.Open(store.Config{URLs: []string{"http://" + px.addr}, Engine: testenv.ESEngine(),
		Prefix: st.Indices().Prefix, Compress: true, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureTemplates(context.Background(), schemas.DefaultTemplateSettings); err != nil {
		t.Fatal(err)
	}
	e, err := export.New(export.Config{Host: "host-p", BatchSize: 200, FlushInterval: 100 * time.Millisecond,
		SpoolDir: t.TempDir(), RetryMin: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond,
		ProgressInterval: 100 * time.Millisecond}, via)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, e)
	began := time.Now().UTC()

	// The producer plays the pipeline: each span is added, then the
	// progress says everything before its start was handed over.
	var mu sync.Mutex
	var starts []int64
	produce := func(d time.Duration) {
		end := time.Now().Add(d)
		for k := len(starts); time.Now().Before(end); k++ {
			s := spansAt(time.Now().Add(-100*time.Millisecond), 0, 1)[0]
			s.Seq, s.ReqTCPSeq, s.Conn.ClientPort = uint64(k), uint32(k*7+1), uint16(20000+k%40000)
			e.Add(s)
			mu.Lock()
			starts = append(starts, s.StartNs)
			mu.Unlock()
			e.Progress(s.StartNs)
			time.Sleep(2 * time.Millisecond)
		}
	}
	// check compares the latest report with what is searchable.
	checks, lastWM := 0, time.Time{}
	check := func() {
		t.Helper()
		reps, err := st.AgentProgress(context.Background(), began)
		if err != nil || len(reps) == 0 {
			return
		}
		w := reps[0].Watermark
		got, err := st.Spans(context.Background(), store.Query{From: began.Add(-time.Minute), To: w.Add(time.Second), PageSize: 5000})
		if err != nil {
			t.Fatal(err)
		}
		stored := 0
		for _, s := range got {
			if s.StartNs < w.UnixNano() {
				stored++
			}
		}
		mu.Lock()
		added := sort.Search(len(starts), func(i int) bool { return starts[i] >= w.UnixNano() })
		mu.Unlock()
		if stored != added {
			t.Fatalf("report says all before %s are stored: %d added, %d searchable", w.Format(time.StampMilli), added, stored)
		}
		if w.Before(lastWM) {
			t.Fatalf("watermark went back from %s to %s", lastWM, w)
		}
		checks, lastWM = checks+1, w
	}
	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		produce(2 * time.Second)
		px.cut()
		produce(2 * time.Second)
		px.restore(t)
		produce(2 * time.Second)
		// The pipeline went idle: everything so far was handed over.
		e.Progress(time.Now().UnixNano())
		close(done)
	}()
	var duringCut time.Time
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-time.After(50 * time.Millisecond):
		}
		check()
		if e.Stats().EngineDown && duringCut.IsZero() {
			duringCut = lastWM
		}
	}
	wg.Wait()
	// After the outage the spool drains and the watermark catches up.
	waitFor(t, 30*time.Second, "the watermark past the last span", func() bool {
		check()
		mu.Lock()
		last := starts[len(starts)-1]
		mu.Unlock()
		return lastWM.UnixNano() > last
	})
	if checks < 10 || e.Stats().Spooled == 0 {
		t.Fatalf("%d checks, %d spans spooled: the test did not exercise an outage", checks, e.Stats().Spooled)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := e.Close(ctx); err != nil {
		t.Fatal(err)
	}
	stop()
	if err := st.Refresh(ctx, st.Indices().Agents()); err != nil {
		t.Fatal(err)
	}
	reps, err := st.AgentProgress(ctx, began)
	if err != nil || len(reps) != 1 || !reps[0].Stopped || reps[0].Host != "host-p" {
		t.Fatalf("after close: %+v %v, want one stopped report of host-p", reps, err)
	}
	t.Logf("%d spans, %d checks; the watermark held at %s during the outage", len(starts), checks, duringCut.Format(time.StampMilli))
}

// While a span is on its way to an engine that does not answer, the
// watermark stays at its start, however far the pipeline has got; once
// the span's fate is known (here: dropped, there is no spool) it moves on.
func TestWatermarkHoldsForSpansInFlight(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // accepts, reads, never answers
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go io.Copy(io.Discard, c)
		}
	}()
	mute, err := store.Open(store.Config{URLs: []string{"http://" + ln.Addr().String()}, Engine: testenv.ESEngine(), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e, err := export.New(export.Config{Host: "host-m", FlushInterval: 20 * time.Millisecond, ProgressInterval: -1}, mute)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, e)
	defer stop()
	if _, ok := e.Watermark(); ok {
		t.Fatal("a watermark before the pipeline reported any progress")
	}
	s := spansAt(time.Now().Add(-time.Second), 0, 1)[0]
	e.Add(s)
	ahead := time.Now().Add(10 * time.Second)
	e.Progress(ahead.UnixNano())
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if w, _ := e.Watermark(); w.UnixNano() > s.StartNs {
			t.Fatalf("watermark %s passed a span still in flight (start %s)", w.Format(time.StampMilli), time.Unix(0, s.StartNs).Format(time.StampMilli))
		}
	}
	waitFor(t, 20*time.Second, "the span dropped and the watermark moving on", func() bool {
		w, _ := e.Watermark()
		return e.Stats().DroppedTotal() == 1 && w.Equal(ahead.UTC().Truncate(0))
	})
}
