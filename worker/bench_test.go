package worker_test

import (
	"context"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/worker"
	"github.com/deeptrace/deeptrace/worker/assemble/assembletest"
)

const benchShards = 8

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkWorker measures assembly with the engine in the loop: one
// minute's window of synthetic traces (gateway, 8 services behind it, 17
// spans per trace on average, 30% of calls through a DNAT'ed VIP) in the
// real OpenSearch, assembled as 8 shard tasks.
//
//   - serial: one worker runs the 8 tasks one after the other; spans/s is
//     the window's spans over the wall time, and the stages are reported
//     apart (fetch = engine reads, assemble = the in-memory step, write =
//     trace documents, stale deletion, refresh).
//   - workers=N: N asynq servers of concurrency 1 take the 8 tasks from
//     Redis, as N worker processes would.
func BenchmarkWorker(b *testing.B) {
	es := testenv.Store(b)
	rdb := testenv.Redis(b)
	ws := time.Now().UTC().Add(-3 * time.Hour).Truncate(time.Minute)
	set := assembletest.Generate(assembletest.Config{Traces: 5000, Start: ws.Add(time.Second), Spacing: 11 * time.Millisecond, Seed: 21})
	writeSpans(b, es, set.Spans)
	spans := float64(len(set.Spans))
	b.Logf("%d spans in %d traces in the window", len(set.Spans), len(set.Roots))
	payload := func(shard, gen int) jobs.AssemblePayload {
		return jobs.AssemblePayload{WindowStart: ws, WindowEnd: ws.Add(time.Minute), Shard: shard, Shards: benchShards, Margin: 10 * time.Second, Generation: gen}
	}

	b.Run("serial", func(b *testing.B) {
		w, err := worker.New(worker.Config{}, es, rdb)
		if err != nil {
			b.Fatal(err)
		}
		var fetch, asm, write time.Duration
		fetched := 0
		cpu0 := cpuTime()
		for b.Loop() {
			traces := 0
			for sh := 0; sh < benchShards; sh++ {
				res, err := w.Assemble(context.Background(), payload(sh, 0))
				if err != nil {
					b.Fatal(err)
				}
				fetch += res.FetchTook
				asm += res.AssembleTook
				write += res.WriteT
				fetched += res.Fetched
				traces += res.Traces
			}
			if traces != len(set.Roots) {
				b.Fatalf("%d traces, want %d", traces, len(set.Roots))
			}
		}
		n := float64(b.N)
		// The worker's own CPU (engine client, JSON, assembly, writes) per
		// span: what one worker core could sustain if the engine kept up.
		b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/(spans*n), "cpu-µs/span")
		b.ReportMetric(spans*n/b.Elapsed().Seconds(), "spans/s")
		b.ReportMetric(spans*n/fetch.Seconds(), "fetch-spans/s")
		b.ReportMetric(spans*n/asm.Seconds(), "assemble-spans/s")
		b.ReportMetric(spans*n/write.Seconds(), "write-spans/s")
		b.ReportMetric(float64(fetched)/(spans*n), "reads/span")
	})

	for _, workers := range []int{1, 2} {
		b.Run("workers="+string(rune('0'+workers)), func(b *testing.B) {
			gen := 0
			st := jobs.NewState(rdb)
			client := asynq.NewClientFromRedisClient(rdb)
			for b.Loop() {
				gen++
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				for i := 0; i < workers; i++ {
					w, err := worker.New(worker.Config{Concurrency: 1}, es, rdb)
					if err != nil {
						b.Fatal(err)
					}
					wg.Add(1)
					go func() { defer wg.Done(); w.Run(ctx) }()
				}
				start := time.Now()
				for sh := 0; sh < benchShards; sh++ {
					t, err := jobs.NewAssembleTask(payload(sh, gen))
					if err != nil {
						b.Fatal(err)
					}
					if _, err := client.Enqueue(t); err != nil {
						b.Fatal(err)
					}
				}
				for {
					done, err := st.Assembled(context.Background(), ws, benchShards)
					if err != nil {
						b.Fatal(err)
					}
					n := 0
					for _, at := range done {
						if !at.Before(start) {
							n++
						}
					}
					if n == benchShards {
						break
					}
					time.Sleep(20 * time.Millisecond)
				}
				b.StopTimer()
				cancel()
				wg.Wait()
				b.StartTimer()
			}
			b.ReportMetric(spans*float64(b.N)/b.Elapsed().Seconds(), "spans/s")
		})
	}
}
