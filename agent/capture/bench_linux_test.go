//go:build linux && amd64

package capture

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/bpf"
)

// Benchmark modes: what is attached while the workload runs.
const (
	modeBase      = "base"           // nothing
	modeFloorBTF  = "floorbtf"       // empty tp_btf sys_enter/sys_exit (the hook capture uses)
	modeFloorRaw  = "floorraw"       // empty raw_tracepoint sys_enter/sys_exit
	modeFloorTP   = "floortp"        // empty syscalls/sys_{enter,exit}_<op> tracepoints
	modeFloorSend = "floorsend"      // floorbtf and an empty tp_btf tcp_sendmsg_locked
	modeUntraced  = "untraced"       // capture attached, the workload filtered out
	modeTraced    = "traced"         // capture attached, the workload traced, events read
	modeTraced2   = "tracedboth"     // HTTP: server and load generator traced
	modeSched     = "tracedsched"    // HTTP: server traced with GoScheduling (casgstatus uprobe)
	modeNoGo      = "tracednogo"     // HTTP: server traced without goroutine tracking
	modeCreate    = "tracedgocreate" // HTTP: server traced with GoCreation (newproc1 uprobes)
	benchSyscallN = 100000
)

// agentMode is one mode's attachment.
type agentMode struct {
	tr     *Tracer
	links  []link.Link
	cancel context.CancelFunc
	done   chan error
	events atomic.Uint64
}

var floorObjs *bpf.FloorObjects

func attach(b *testing.B, mode string, ops []string) *agentMode {
	b.Helper()
	a := &agentMode{}
	if strings.HasPrefix(mode, "floor") && floorObjs == nil {
		if err := EnsureTracefs(); err != nil {
			b.Skip(err)
		}
		floorObjs = new(bpf.FloorObjects)
		if err := bpf.LoadFloorObjects(floorObjs, nil); err != nil {
			b.Skipf("load floor programs: %v", err)
		}
	}
	var err error
	add := func(l link.Link, e error) {
		if e != nil {
			err = e
			return
		}
		a.links = append(a.links, l)
	}
	switch mode {
	case modeBase:
	case modeFloorBTF, modeFloorSend:
		add(link.AttachTracing(link.TracingOptions{Program: floorObjs.FloorBtfEnter}))
		add(link.AttachTracing(link.TracingOptions{Program: floorObjs.FloorBtfExit}))
		if mode == modeFloorSend {
			add(link.AttachTracing(link.TracingOptions{Program: floorObjs.FloorBtfSendmsg}))
		}
	case modeFloorRaw:
		add(link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_enter", Program: floorObjs.FloorRawEnter}))
		add(link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_exit", Program: floorObjs.FloorRawExit}))
	case modeFloorTP:
		for _, op := range ops {
			add(link.Tracepoint("syscalls", "sys_enter_"+op, floorObjs.FloorTpEnter, nil))
			add(link.Tracepoint("syscalls", "sys_exit_"+op, floorObjs.FloorTpExit, nil))
		}
	default:
		a.tr = openTracer(b, Config{GoScheduling: mode == modeSched, GoCreation: mode == modeCreate, NoGoRuntime: mode == modeNoGo,
			RingBytes: envInt("BENCH_RING", 0), ChunkBytes: envInt("BENCH_CHUNK", 0), PollInterval: time.Duration(envInt("BENCH_POLL_MS", 0)) * time.Millisecond})
		ctx, cancel := context.WithCancel(context.Background())
		a.cancel, a.done = cancel, make(chan error, 1)
		go func() {
			a.done <- a.tr.Read(ctx, func(evs []event.Event, _ []event.GoEvent) {
				a.events.Add(uint64(len(evs)))
			})
		}()
	}
	if err != nil {
		a.stop()
		b.Fatalf("attach %s: %v", mode, err)
	}
	return a
}

func (a *agentMode) stop() {
	for _, l := range a.links {
		l.Close()
	}
	if a.tr != nil {
		a.cancel()
		<-a.done
		a.tr.Close()
	}
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// callbench runs one testpeer callbench and returns ns per call.
func callbench(b *testing.B, a *agentMode, traced bool, op, addr string, n int) float64 {
	b.Helper()
	p := startPeer(b, nil, "callbench", "-cpu", "0", "-connect", addr, "-op", op, "-n", strconv.Itoa(n), "-size", strconv.Itoa(envInt("BENCH_SIZE", 64)))
	p.expect(b, "READY", 10*time.Second)
	if traced {
		if err := a.tr.TracePID(p.pid()); err != nil {
			b.Fatal(err)
		}
	}
	fmt.Fprintln(p.stdin, "go")
	f := strings.Fields(p.expect(b, "NS ", 120*time.Second))
	p.cmd.Wait()
	ns, _ := strconv.ParseFloat(f[1], 64)
	return ns / float64(n)
}

// BenchmarkSyscallOverhead measures what capture adds to one 64-byte
// write, sendto, read and recvfrom on a loopback TCP socket, against the
// same calls with nothing attached and with empty programs on each of the
// three syscall hooks (the floor), and with the tp_btf floor plus an empty
// program on tcp_sendmsg_locked (what that hook costs every send). The
// measured process runs alone on CPU 0 (the agent on CPU 1) and its peer
// socket is idle during the loop. Rounds interleave the modes (rotated);
// reported are the medians, and the medians of each round's own
// differences against the floor. Then, with the kernel's BPF statistics
// on, the programs' own run time per traced call and per filtered-out run.
// BENCH_ROUNDS, BENCH_CALLS, BENCH_SIZE, BENCH_MODES and BENCH_OPS choose
// what runs (BENCH_ROUNDS=0: the statistics only; BENCH_KSTATS=0: none).
//
//	go test -run XXX -bench SyscallOverhead -benchtime 1x ./agent/capture/
func BenchmarkSyscallOverhead(b *testing.B) {
	ops := []string{"write", "sendto", "read", "recvfrom"}
	modes := []string{modeBase, modeFloorTP, modeFloorRaw, modeFloorBTF, modeFloorSend, modeUntraced, modeTraced}
	if m := os.Getenv("BENCH_MODES"); m != "" {
		modes = strings.Split(m, ",")
	}
	if o := os.Getenv("BENCH_OPS"); o != "" {
		ops = strings.Split(o, ",")
	}
	rounds := envInt("BENCH_ROUNDS", 5)
	if os.Getenv("BENCH_ROUNDS") == "0" {
		rounds = 0 // only the kernel statistics
	}
	n := envInt("BENCH_CALLS", benchSyscallN)
	pinSelf(b, 1)
	// The peer socket lives in the measured process and stays idle while
	// the loop runs (callbench -connect self).
	addrOf := func(string) string { return "self" }
	res := map[string][]float64{}
	for i := 0; i < b.N; i++ {
		for r := 0; r < rounds; r++ {
			for k := range modes {
				m := modes[(k+r)%len(modes)] // rotated: no mode always runs first
				a := attach(b, m, ops)
				for _, op := range ops {
					res[op+"-"+m] = append(res[op+"-"+m], callbench(b, a, m == modeTraced, op, addrOf(op), n))
				}
				if a.tr != nil {
					if st, _ := a.tr.Stats(); st.Dropped > 0 {
						b.Logf("round %d %s: %d events dropped", r, m, st.Dropped)
					}
				}
				a.stop()
			}
		}
	}
	// The differences are taken within each round (the machine's other
	// load drifts between rounds), then their median.
	diff := func(op, mode, against string) (med float64, each []float64) {
		x, y := res[op+"-"+mode], res[op+"-"+against]
		for r := range min(len(x), len(y)) {
			each = append(each, x[r]-y[r])
		}
		return median(each), each
	}
	b.Logf("ns per call, median of %d rounds of %d calls (%d bytes, loopback TCP); differences: median of the rounds' own", rounds, n, envInt("BENCH_SIZE", 64))
	b.Logf("%-9s %8s %8s %8s %8s %8s %8s %8s | %9s %9s %9s %9s", "op", "base", "tp", "raw_tp", "tp_btf", "+send", "untraced", "traced",
		"floor+", "send+", "untraced+", "traced+")
	for _, op := range ops {
		m := func(mode string) float64 { return median(res[op+"-"+mode]) }
		floor, _ := diff(op, modeFloorBTF, modeBase)
		send, _ := diff(op, modeFloorSend, modeFloorBTF)
		untraced, ue := diff(op, modeUntraced, modeFloorBTF)
		traced, te := diff(op, modeTraced, modeFloorBTF)
		b.Logf("%-9s %8.0f %8.0f %8.0f %8.0f %8.0f %8.0f %8.0f | %9.0f %9.0f %9.0f %9.0f", op,
			m(modeBase), m(modeFloorTP), m(modeFloorRaw), m(modeFloorBTF), m(modeFloorSend), m(modeUntraced), m(modeTraced),
			floor, send, untraced, traced)
		for _, mode := range modes {
			b.ReportMetric(m(mode), op+"-"+mode+"-ns/call")
		}
		b.ReportMetric(untraced, op+"-untraced-over-floor-ns/call")
		b.ReportMetric(traced, op+"-traced-over-floor-ns/call")
		b.Logf("  %-9s rounds: untraced+ %.0f, traced+ %.0f", op, ue, te)
	}

	// The programs' own run time, from the kernel's statistics (which
	// cost a little themselves, so they stay off during the timings).
	if os.Getenv("BENCH_KSTATS") == "0" {
		return
	}
	stats, err := EnableKernelStats()
	if err != nil {
		b.Logf("kernel BPF statistics unavailable: %v", err)
		return
	}
	defer stats.Close()
	// The statistics' own cost: empty programs on the same hook.
	fa := attach(b, modeFloorBTF, ops)
	fs0, _ := floorObjs.FloorBtfEnter.Stats()
	fx0, _ := floorObjs.FloorBtfExit.Stats()
	callbench(b, fa, false, "write", addrOf("write"), n)
	fs1, _ := floorObjs.FloorBtfEnter.Stats()
	fx1, _ := floorObjs.FloorBtfExit.Stats()
	fa.stop()
	emptyRuns := fs1.RunCount - fs0.RunCount + fx1.RunCount - fx0.RunCount
	emptyNs := float64((fs1.Runtime - fs0.Runtime + fx1.Runtime - fx0.Runtime).Nanoseconds()) / float64(max(emptyRuns, 1))
	b.Logf("BPF run time of an empty tp_btf program (the statistics' own cost): %.0f ns per run", emptyNs)
	b.ReportMetric(emptyNs, "empty-bpf-ns/run")
	// Filtered-out runs first: their mean run time also prices the other
	// processes' runs that land among the traced calls below.
	untracedRun := map[string]float64{}
	for _, m := range []string{modeUntraced, modeTraced} {
		a := attach(b, m, ops)
		for _, op := range ops {
			before, _ := a.tr.ProgramStats()
			callbench(b, a, m == modeTraced, op, addrOf(op), n)
			after, _ := a.tr.ProgramStats()
			var rt time.Duration
			var runs uint64
			var each []string
			prev := map[string]ProgramStat{}
			for _, p := range before {
				prev[p.Name] = p
			}
			for _, p := range after {
				if n := p.Name; n == "sys_enter" || n == "sys_exit" || n == "tcp_sendmsg_locked" {
					dt, dr := p.RunTime-prev[n].RunTime, p.Runs-prev[n].Runs
					rt += dt
					runs += dr
					each = append(each, fmt.Sprintf("%s %.0f ns x %d", n, float64(dt.Nanoseconds())/float64(max(dr, 1)), dr))
				}
			}
			sort.Strings(each)
			b.Logf("  %s %-9s: %s", m, op, strings.Join(each, ", "))
			perRun := float64(rt.Nanoseconds()) / float64(max(runs, 1))
			if m == modeUntraced {
				untracedRun[op] = perRun
				b.Logf("BPF run time, filtered out, %-9s: %5.0f ns per run, %4.0f ns net of the statistics (%d runs)", op, perRun, perRun-emptyNs, runs)
				b.ReportMetric(perRun-emptyNs, op+"-untraced-bpf-net-ns/run")
				continue
			}
			// Runs beyond the workload's own (enter, exit and, for
			// sends when it is attached, tcp_sendmsg_locked) are other
			// processes' calls, priced as filtered-out runs.
			own := 2.0
			if (op == "write" || op == "sendto") && runsBetween(after, before, "tcp_sendmsg_locked") >= uint64(n) {
				own = 3
			}
			others := float64(runs) - own*float64(n)
			perCall := (float64(rt.Nanoseconds()) - max(others, 0)*untracedRun[op]) / float64(n)
			b.Logf("BPF run time, traced,       %-9s: %5.0f ns per call (all its programs), %4.0f ns net of the statistics (%d runs, %.0f of other processes)",
				op, perCall, perCall-own*emptyNs, runs, max(others, 0))
			b.ReportMetric(perCall-own*emptyNs, op+"-traced-bpf-net-ns/call")
		}
		a.stop()
	}
}

// after2 is how often the named program ran between two ProgramStats.
func runsBetween(after, before []ProgramStat, name string) uint64 {
	var n uint64
	for _, p := range after {
		if p.Name == name {
			n += p.Runs
		}
	}
	for _, p := range before {
		if p.Name == name {
			n -= p.Runs
		}
	}
	return n
}

// pinSelf pins the agent (this process) to one CPU, the workload's peers
// to the same, and leaves the other CPU to the measured process; it undoes
// the pin when the benchmark ends. Without pinning the 2-vCPU VM's noise
// swamps the differences.
func pinSelf(b *testing.B, cpu int) {
	if runtime.NumCPU() < 2 {
		return
	}
	var set, all unix.CPUSet
	set.Set(cpu)
	for i := 0; i < runtime.NumCPU(); i++ {
		all.Set(i)
	}
	apply := func(s *unix.CPUSet) {
		ents, _ := os.ReadDir("/proc/self/task")
		for _, e := range ents {
			if tid, err := strconv.Atoi(e.Name()); err == nil {
				unix.SchedSetaffinity(tid, s)
			}
		}
	}
	apply(&set)
	b.Cleanup(func() { apply(&all) })
}

// procCPU is a process's user+system CPU time, from /proc (10 ms ticks).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // fields from 3 (state) on
	ut, _ := strconv.ParseUint(f[11], 10, 64)                // field 14: utime
	st, _ := strconv.ParseUint(f[12], 10, 64)                // field 15: stime
	return time.Duration(ut+st) * (time.Second / 100)
}

// cpuTime is this process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkReaderThroughput: a traced process makes 64-byte writes as fast
// as it can; the agent reads, decodes, orders and hands on the events.
// Reported: events per second of the agent's CPU time (the rate one core
// sustains), events per wall second, and drops.
//
//	go test -run XXX -bench ReaderThroughput -benchtime 1x ./agent/capture/
func BenchmarkReaderThroughput(b *testing.B) {
	n := envInt("BENCH_CALLS", 1000000)
	dir := b.TempDir()
	sink := startPeer(b, nil, "sink", "-dir", dir)
	addr := strings.TrimPrefix(sink.expect(b, "ADDR ", 10*time.Second), "ADDR ")
	for i := 0; i < b.N; i++ {
		a := attach(b, modeTraced, nil)
		p := startPeer(b, nil, "callbench", "-connect", addr, "-op", "write", "-n", strconv.Itoa(n), "-size", strconv.Itoa(envInt("BENCH_SIZE", 64)))
		p.expect(b, "READY", 10*time.Second)
		if err := a.tr.TracePID(p.pid()); err != nil {
			b.Fatal(err)
		}
		cpu0, t0 := cpuTime(), time.Now()
		fmt.Fprintln(p.stdin, "go")
		p.expect(b, "NS ", 120*time.Second)
		p.cmd.Wait()
		// Let the reader finish what is in the ring.
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			st, _ := a.tr.Stats()
			if st.Decoded+st.Dropped >= st.Events+st.Dropped && a.events.Load() >= uint64(n) {
				break
			}
		}
		cpu, wall := cpuTime()-cpu0, time.Since(t0)
		st, _ := a.tr.Stats()
		a.stop()
		got := a.events.Load()
		b.ReportMetric(float64(got)/cpu.Seconds(), "events/cpu-s")
		b.ReportMetric(float64(got)/wall.Seconds(), "events/s")
		b.ReportMetric(float64(st.Dropped), "dropped")
		b.Logf("%d calls: %d events delivered, %d dropped in the kernel, agent CPU %v over %v wall: %.0f events per CPU-second, %.0f per second",
			n, got, st.Dropped, cpu.Round(time.Millisecond), wall.Round(time.Millisecond), float64(got)/cpu.Seconds(), float64(got)/wall.Seconds())
	}
}

// BenchmarkHTTPThroughput: a Go net/http server (its own process) under a
// Go keep-alive load generator (another process; 8 connections), answering
// 1 KiB or 16 KiB with an empty handler, or 1 KiB after ~50 µs of
// application work (30 SHA-256 rounds). Each with nothing attached,
// with an empty tp_btf floor, with capture attached but the server
// filtered out, with the server traced, and with server and load generator
// traced, and with the server traced and its goroutine switches probed
// (GoScheduling) or goroutine creation probed (GoCreation). Rounds
// interleave the modes (rotated); reported are medians, and the medians of
// each round's own changes against the base and against the floor: of
// throughput (requests per second at fixed concurrency, which on a 2-CPU
// machine the agent's CPU competes for) and of CPU time per request
// (server + load generator + agent), which the machine's other load
// disturbs less. BENCH_MODES, BENCH_ROUNDS, BENCH_SECONDS and BENCH_HTTP
// (body:work,...) choose what runs.
//
//	go test -run XXX -bench HTTPThroughput -benchtime 1x ./agent/capture/
func BenchmarkHTTPThroughput(b *testing.B) {
	modes := []string{modeBase, modeFloorBTF, modeUntraced, modeTraced, modeTraced2, modeCreate, modeSched}
	if m := os.Getenv("BENCH_MODES"); m != "" {
		modes = strings.Split(m, ",")
	}
	rounds := envInt("BENCH_ROUNDS", 3)
	secs := envInt("BENCH_SECONDS", 3)
	if g := envInt("BENCH_AGENT_GOGC", 0); g > 0 {
		// The agent's GC only: the peers keep the environment's.
		defer debug.SetGCPercent(debug.SetGCPercent(g))
	}
	configs := []struct{ body, work int }{{1024, 0}, {16384, 0}, {1024, 30}}
	if v := os.Getenv("BENCH_HTTP"); v != "" { // body:work,...
		configs = configs[:0]
		for _, c := range strings.Split(v, ",") {
			var body, work int
			if _, err := fmt.Sscanf(c, "%d:%d", &body, &work); err != nil {
				b.Fatalf("BENCH_HTTP %q: want body:work,...", v)
			}
			configs = append(configs, struct{ body, work int }{body, work})
		}
	}
	for _, c := range configs {
		body := c.body
		b.Run(fmt.Sprintf("body=%d/work=%d", c.body, c.work), func(b *testing.B) {
			dir := b.TempDir()
			srv := startPeer(b, nil, "http", "-dir", dir, "-size", strconv.Itoa(c.body), "-work", strconv.Itoa(c.work))
			addr := strings.TrimPrefix(srv.expect(b, "ADDR ", 10*time.Second), "ADDR ")
			res := map[string][]float64{}
			cpu := map[string][]float64{} // µs of CPU per request: server + load generator + agent
			part := map[string][]float64{}
			for i := 0; i < b.N; i++ {
				for r := 0; r < rounds; r++ {
					for k := range modes {
						m := modes[(k+r)%len(modes)] // rotated: no mode always runs first
						a := attach(b, m, nil)
						if m != modeBase && m != modeFloorBTF && m != modeUntraced {
							if err := a.tr.TracePID(srv.pid()); err != nil {
								b.Fatal(err)
							}
						}
						ld := startPeer(b, nil, "httpload", "-url", "http://"+addr+"/", "-c", "8", "-d", fmt.Sprintf("%ds", secs))
						ld.expect(b, "READY", 10*time.Second)
						if m == modeTraced2 {
							if err := a.tr.TracePID(ld.pid()); err != nil {
								b.Fatal(err)
							}
						}
						srv0, self0 := procCPU(srv.pid()), cpuTime()
						fmt.Fprintln(ld.stdin, "go")
						f := strings.Fields(ld.expect(b, "RPS ", time.Duration(secs+30)*time.Second))
						srv1, self1 := procCPU(srv.pid()), cpuTime()
						ld.cmd.Wait()
						rps, _ := strconv.ParseFloat(f[1], 64)
						reqs, _ := strconv.ParseFloat(f[2], 64)
						res[m] = append(res[m], rps)
						used := (srv1 - srv0) + (self1 - self0) + ld.cmd.ProcessState.UserTime() + ld.cmd.ProcessState.SystemTime()
						cpu[m] = append(cpu[m], float64(used.Microseconds())/reqs)
						part[m+"/server"] = append(part[m+"/server"], float64((srv1-srv0).Microseconds())/reqs)
						part[m+"/agent"] = append(part[m+"/agent"], float64((self1-self0).Microseconds())/reqs)
						part[m+"/load"] = append(part[m+"/load"], float64((ld.cmd.ProcessState.UserTime()+ld.cmd.ProcessState.SystemTime()).Microseconds())/reqs)
						if a.tr != nil {
							st, _ := a.tr.Stats()
							if st.Dropped > 0 {
								b.Logf("round %d %s: %d events dropped", r, m, st.Dropped)
							}
						}
						a.stop()
					}
				}
			}
			// Changes are taken within each round (the machine's other
			// load drifts between rounds), then their median: against
			// nothing attached, and against the floor (empty programs on
			// the syscall hooks) when it ran.
			change := func(v map[string][]float64, m, against string) float64 {
				var each []float64
				for r := range min(len(v[m]), len(v[against])) {
					each = append(each, 100*(v[m][r]-v[against][r])/v[against][r])
				}
				if len(each) == 0 {
					return math.NaN() // that mode did not run
				}
				return median(each)
			}
			b.Logf("body %5d B work %2d: median of %d rounds of %ds; changes: median of the rounds' own", body, c.work, rounds, secs)
			for _, m := range modes {
				rps, perReq := median(res[m]), median(cpu[m])
				b.ReportMetric(rps, m+"-req/s")
				b.ReportMetric(perReq, m+"-cpu-us/req")
				b.ReportMetric(change(res, m, modeBase), m+"-req/s-change-%")
				b.ReportMetric(change(cpu, m, modeBase), m+"-cpu/req-change-%")
				b.Logf("  %-14s %8.0f req/s %+6.1f%% (vs floor %+6.1f%%) | %6.1f µs CPU/req %+6.1f%% (vs floor %+6.1f%%; server %.1f, load %.1f, agent %.1f)  (req/s %.0f)",
					m, rps, change(res, m, modeBase), change(res, m, modeFloorBTF), perReq, change(cpu, m, modeBase), change(cpu, m, modeFloorBTF),
					median(part[m+"/server"]), median(part[m+"/load"]), median(part[m+"/agent"]), res[m])
			}
		})
	}
}
