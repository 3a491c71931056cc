package worker_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
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

// enginePID finds the process listening on the engine URL's port on this
// machine (0 when the engine is remote or /proc does not tell).
func enginePID(rawURL string) int {
	u, err := url.Parse(rawURL)
	if err != nil {
		return 0
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		return 0
	}
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			// sl local_address rem_address st ... inode
			fs := strings.Fields(line)
			if len(fs) < 10 || fs[3] != "0A" {
				continue
			}
			i := strings.LastIndexByte(fs[1], ':')
			if p, err := strconv.ParseUint(fs[1][i+1:], 16, 16); err == nil && int(p) == port {
				inodes["socket:["+fs[9]+"]"] = true
			}
		}
	}
	if len(inodes) == 0 {
		return 0
	}
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		if l, err := os.Readlink(fd); err == nil && inodes[l] {
			pid, _ := strconv.Atoi(strings.Split(fd, "/")[2])
			return pid
		}
	}
	return 0
}

// procCPU is a process's user and system CPU time so far, from /proc.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	fs := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(fs[11], 10, 64)
	stime, _ := strconv.ParseInt(fs[12], 10, 64)
	// Clock ticks; USER_HZ is 100 on every Linux this runs on.
	return time.Duration(utime+stime) * 10 * time.Millisecond
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
//
// Both report the CPU the worker (this process) and, when it runs on this
// machine, the engine spent per span and as cores busy over the wall time:
// on a small machine shared by both, they bound each other.
func BenchmarkWorker(b *testing.B) {
	engine := enginePID(testenv.ESURL())
	if engine == 0 {
		b.Logf("engine process not found on this machine; its CPU is not reported")
	}
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
		var took [benchShards]time.Duration
		fetched := 0
		cpu0, ecpu0 := cpuTime(), procCPU(engine)
		for b.Loop() {
			traces := 0
			for sh := 0; sh < benchShards; sh++ {
				res, err := w.Assemble(context.Background(), payload(sh, 0))
				if err != nil {
					b.Fatal(err)
				}
				took[sh] += res.Took
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
		reportCPU(b, spans*n, cpuTime()-cpu0, engine, procCPU(engine)-ecpu0)
		b.ReportMetric(spans*n/b.Elapsed().Seconds(), "spans/s")
		b.ReportMetric(spans*n/fetch.Seconds(), "fetch-spans/s")
		b.ReportMetric(spans*n/asm.Seconds(), "assemble-spans/s")
		b.ReportMetric(spans*n/write.Seconds(), "write-spans/s")
		b.ReportMetric(float64(fetched)/(spans*n), "reads/span")
		// The shard holding the entry service owns every trace and reads
		// the most: N workers cannot finish the window before it.
		var sum time.Duration
		for _, d := range took {
			sum += d
		}
		b.ReportMetric(100*float64(slices.Max(took[:]))/float64(sum), "largest-task-%")
	})

	for _, workers := range []int{1, 2} {
		b.Run("workers="+string(rune('0'+workers)), func(b *testing.B) {
			gen := 0
			st := jobs.NewState(rdb)
			client := asynq.NewClientFromRedisClient(rdb)
			var cpu, ecpu time.Duration
			for b.Loop() {
				cpu0, ecpu0 := cpuTime(), procCPU(engine)
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
				cpu += cpuTime() - cpu0
				ecpu += procCPU(engine) - ecpu0
				cancel()
				wg.Wait()
				b.StartTimer()
			}
			reportCPU(b, spans*float64(b.N), cpu, engine, ecpu)
			b.ReportMetric(spans*float64(b.N)/b.Elapsed().Seconds(), "spans/s")
		})
	}
}

// reportCPU reports the worker's and the engine's CPU per span and as
// cores busy over the benchmark's wall time.
func reportCPU(b *testing.B, spans float64, worker time.Duration, engine int, engineCPU time.Duration) {
	wall := b.Elapsed().Seconds()
	b.ReportMetric(float64(worker.Microseconds())/spans, "cpu-µs/span")
	b.ReportMetric(worker.Seconds()/wall, "worker-cores")
	if engine != 0 {
		b.ReportMetric(float64(engineCPU.Microseconds())/spans, "engine-cpu-µs/span")
		b.ReportMetric(engineCPU.Seconds()/wall, "engine-cores")
	}
}
