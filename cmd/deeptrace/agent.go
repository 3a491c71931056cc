package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/deeptrace/deeptrace/agent/capture"
	"github.com/deeptrace/deeptrace/agent/conntrack"
	"github.com/deeptrace/deeptrace/agent/correlate"
	"github.com/deeptrace/deeptrace/agent/eventlog"
	"github.com/deeptrace/deeptrace/agent/export"
	"github.com/deeptrace/deeptrace/agent/pipeline"
	"github.com/deeptrace/deeptrace/agent/protocol/detect"
	"github.com/deeptrace/deeptrace/internal/ops"
	"github.com/deeptrace/deeptrace/schemas"
)

// agentFlags is the agent's configuration.
type agentFlags struct {
	host         string
	pids         []int
	comms        []string
	all          bool
	ports        []uint
	netns        []string
	cgroups      []string
	services     []string
	servicesFile string
	chunkBytes   int
	maxCall      int
	ringMiB      int
	replay       string
	record       string
	spansOut     string
	correlation  string
	spoolDir     string
	spoolMax     int64
	es           esFlags
	ops          ops.Flags
}

func agentCmd() *cobra.Command {
	var f agentFlags
	cmd := withEnv(&cobra.Command{
		Use:   "agent",
		Short: "Capture the traced processes' network calls with eBPF and turn them into spans",
		Long: `The agent loads DeepTrace's eBPF programs (root, or CAP_BPF + CAP_PERFMON +
CAP_SYS_ADMIN), follows every TCP connection of the selected processes, parses
HTTP/1, HTTP/2 and gRPC, Redis, MySQL and PostgreSQL, and writes one span per
request/response exchange at each end.

--replay plays a recorded event log (--record writes one) instead of capturing,
so everything after capture runs without privileges.`,
		RunE: func(c *cobra.Command, _ []string) error { return runAgent(c.Context(), &f) },
	})
	fs := cmd.Flags()
	hn, _ := os.Hostname()
	fs.StringVar(&f.host, "host", hn, "host name written in every span")
	fs.IntSliceVar(&f.pids, "pid", nil, "trace these process ids")
	fs.StringSliceVar(&f.comms, "comm", nil, "trace processes with these names (at most 15 bytes)")
	fs.BoolVar(&f.all, "all", false, "trace every process (except the agent)")
	fs.UintSliceVar(&f.ports, "port", nil, "only connections with these local or remote ports")
	fs.StringSliceVar(&f.netns, "netns", nil, "only sockets in these network namespaces (a name under /run/netns, or a path such as /proc/PID/ns/net)")
	fs.StringSliceVar(&f.cgroups, "cgroup", nil, "trace processes in these cgroup v2 directories")
	fs.StringSliceVar(&f.services, "service", nil, "name a process's service: PID=NAME")
	fs.StringVar(&f.servicesFile, "services-file", "", "JSON list of {name, pid} naming services (the demo workload writes one) ; those pids are traced")
	fs.IntVar(&f.chunkBytes, "chunk-bytes", capture.MinChunk, "payload bytes per event")
	fs.IntVar(&f.maxCall, "max-call-bytes", 64<<10, "payload bytes captured per call; the rest is counted, not copied")
	fs.IntVar(&f.ringMiB, "ring-mib", 16, "ring buffer size in MiB (a power of two)")
	fs.StringVar(&f.replay, "replay", "", "play this recorded event log instead of capturing")
	fs.StringVar(&f.record, "record", "", "also record the raw events to this event log")
	fs.StringVar(&f.spansOut, "spans-out", "", "write spans as JSON lines to this file ('-' for stdout) instead of the engine")
	fs.StringVar(&f.correlation, "correlation", string(correlate.Ours), "local correlation: ours, thread or fifo (baselines), or none")
	fs.StringVar(&f.spoolDir, "spool-dir", "", "spool spans here while the engine is unreachable (empty: .state/spool/<host> under the working directory)")
	fs.Int64Var(&f.spoolMax, "spool-max-bytes", 1<<30, "bound of the spool on disk; beyond it the oldest spans are dropped and counted")
	f.es.register(fs)
	f.ops = ops.Flags{Listen: ops.ListenAgent}
	f.ops.Register(fs)
	registerAgentConfigFlags(fs)    // central configuration (agent_config.go)
	registerAgentRedactFlags(fs)    // secrets kept out of spans (agent_redact.go)
	registerAgentPrivilegeFlags(fs) // capabilities dropped after attach (agent_privilege.go)
	return cmd
}

// spoolPath is where the exporter spools (none with --spans-out).
func (f *agentFlags) spoolPath() string {
	switch {
	case f.spansOut != "":
		return ""
	case f.spoolDir != "":
		return f.spoolDir
	}
	return filepath.Join(".state", "spool", f.host)
}

func runAgent(ctx context.Context, f *agentFlags) error {
	if os.Getenv("GOGC") == "" {
		// Payload buffers churn; fewer collections cut the agent's CPU per
		// event by about a quarter (docs/capture.md). GOGC overrides.
		debug.SetGCPercent(400)
	}
	log, err := f.ops.Logger()
	if err != nil {
		return err
	}
	if f.host == "" {
		return errors.New("host: required")
	}
	if err := resolveAgentUser(f.replay != ""); err != nil { // agent_privilege.go
		return err
	}
	names, err := serviceNames(f)
	if errors.Is(err, fs.ErrNotExist) {
		// The workload may start after the agent: the watcher picks the
		// file up when it appears.
		log.Warn("services file not there yet; waiting for it", "file", f.servicesFile)
		f2 := *f
		f2.servicesFile = ""
		names, err = serviceNames(&f2)
	}
	if err != nil {
		return err
	}
	reg := ops.NewRegistry()
	out, closeOut, err := spanOutput(ctx, f, reg, log)
	if err != nil {
		return err
	}
	defer closeOut()

	var src pipeline.Source
	var tracer *capture.Tracer
	var attached []any
	var wall func(uint64) int64
	var mono func(int64) uint64
	if f.replay != "" {
		file, err := os.Open(f.replay)
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		defer file.Close()
		rd := eventlog.NewReader(file)
		src = rd
		wall = func(m uint64) int64 { return int64(m) + rd.Header().ClockOffset }
	} else {
		cfg, err := captureConfig(f, names)
		if err != nil {
			return err
		}
		tr, err := capture.Open(cfg)
		if err != nil {
			return err
		}
		defer tr.Close()
		src, tracer = tr, tr
		clock := tr.Clock()
		wall = clock.WallNs
		mono = func(w int64) uint64 { return uint64(w - clock.WallNs(0)) }
		attached = []any{"pids", cfg.PIDs, "comms", cfg.Comms, "all", cfg.All, "host", f.host}
		if f.record != "" {
			file, err := os.Create(f.record)
			if err != nil {
				return fmt.Errorf("record: %w", err)
			}
			defer file.Close()
			w := eventlog.NewWriter(file)
			if err := w.Header(eventlog.Header{ClockOffset: clock.WallNs(0), Host: f.host}); err != nil {
				return fmt.Errorf("record: %w", err)
			}
			src = eventlog.Tee(src, w)
		}
	}
	// The ops endpoint comes up once capture is attached (ready means
	// tracing), and is listening before the agent says it is attached.
	if f.ops.Listen != "" {
		ln, err := net.Listen("tcp", f.ops.Listen)
		if err != nil {
			return fmt.Errorf("ops-listen %s: %w", f.ops.Listen, err)
		}
		go func() {
			if err := ops.ServeListener(ctx, ln, reg, nil); err != nil {
				log.Error("ops endpoint", "err", err)
			}
		}()
	}
	if tracer != nil {
		log.Info("capture attached", attached...)
		if err := dropAgentPrivileges(log, f.spoolPath(), agentConfigState()); err != nil { // agent_privilege.go
			return err
		}
	}
	live, err := startAgentConfig(ctx, tracer, f, reg, log) // central configuration, applied live (agent_config.go)
	if err != nil {
		return err
	}
	out = live.Sampler.Output(out)
	svc := &serviceRegistry{names: names}
	if f.servicesFile != "" {
		go svc.watch(ctx, f, tracer, log)
	}
	var corr pipeline.Correlator
	if f.correlation != "none" {
		m, err := correlate.ParseMethod(f.correlation)
		if err != nil {
			return fmt.Errorf("correlation: %w", err)
		}
		c, err := correlate.New(correlate.Config{Method: m, Wall: wall}, out.Add)
		if err != nil {
			return err
		}
		corr = c
	}
	if tracer != nil {
		if err := reg.Register(captureCollector{tracer}); err != nil {
			return fmt.Errorf("capture metrics: %w", err)
		}
		defer func() {
			if st, err := tracer.Stats(); err == nil {
				log.Info("capture stopped", "events", st.Events, "decoded", st.Decoded, "dropped", st.Dropped,
					"truncated_calls", st.TruncatedCalls, "faults", st.Faults, "late", st.Late, "gaps", st.Gaps, "malformed", st.Malformed)
			}
		}()
	}
	return pipeline.Run(ctx, pipeline.Config{
		Correlator: corr,
		Conntrack:  conntrack.Config{Host: f.host, MaxCallBytes: f.maxCall, Wall: wall, Service: svc.service, Redact: live.Redact, PayloadBytes: &live.PayloadBytes, Parse: &live.Protocols},
		Protocols:  detect.Registry{},
		Output:     out,
		Mono:       mono,
		Log:        log,
	}, src)
}

func captureConfig(f *agentFlags, names map[uint32]string) (capture.Config, error) {
	cfg := capture.Config{
		All: f.all, PIDs: f.pids, Comms: f.comms,
		ChunkBytes: f.chunkBytes, MaxCallBytes: f.maxCall, RingBytes: f.ringMiB << 20,
	}
	for pid := range names {
		cfg.PIDs = append(cfg.PIDs, int(pid))
	}
	for _, p := range f.ports {
		if p == 0 || p > 65535 {
			return cfg, fmt.Errorf("port %d: want 1..65535", p)
		}
		cfg.Ports = append(cfg.Ports, uint16(p))
	}
	for _, n := range f.netns {
		path := n
		if !strings.Contains(n, "/") {
			path = "/run/netns/" + n
		}
		ino, err := capture.NetNSInode(path)
		if err != nil {
			return cfg, fmt.Errorf("netns %s: %w", n, err)
		}
		cfg.NetNS = append(cfg.NetNS, ino)
	}
	for _, g := range f.cgroups {
		id, err := capture.CgroupID(g)
		if err != nil {
			return cfg, fmt.Errorf("cgroup %s: %w", g, err)
		}
		cfg.Cgroups = append(cfg.Cgroups, id)
	}
	if !cfg.All && len(cfg.PIDs) == 0 && len(cfg.Comms) == 0 && len(cfg.Cgroups) == 0 && f.servicesFile == "" {
		return cfg, errors.New("nothing to trace: give --pid, --comm, --cgroup, --services-file or --all")
	}
	return cfg, cfg.Validate()
}

// serviceNames reads --service and --services-file into pid → service.
func serviceNames(f *agentFlags) (map[uint32]string, error) {
	names := map[uint32]string{}
	for _, s := range f.services {
		pid, name, ok := strings.Cut(s, "=")
		n, err := strconv.ParseUint(pid, 10, 32)
		if !ok || err != nil || name == "" {
			return nil, fmt.Errorf("service %q: want PID=NAME", s)
		}
		names[uint32(n)] = name
	}
	if f.servicesFile != "" {
		b, err := os.ReadFile(f.servicesFile)
		if err != nil {
			return nil, fmt.Errorf("services-file: %w", err)
		}
		var list []struct {
			Name string `json:"name"`
			PID  uint32 `json:"pid"`
		}
		if err := json.Unmarshal(b, &list); err != nil {
			return nil, fmt.Errorf("services-file %s: %w", f.servicesFile, err)
		}
		for _, s := range list {
			if s.PID != 0 && s.Name != "" {
				names[s.PID] = s.Name
			}
		}
	}
	return names, nil
}

// serviceRegistry names the services of processes, from --service and the
// services file, which it re-reads while the agent runs: a workload that
// starts after the agent gets its names and its pids traced.
type serviceRegistry struct {
	mu    sync.RWMutex
	names map[uint32]string
}

// service names the service of pid: its own entry, a parent's (forked
// workers), or the process name.
func (r *serviceRegistry) service(pid uint32, comm string) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if n, ok := r.names[pid]; ok {
		return n
	}
	for p, depth := pid, 0; depth < 4; depth++ {
		if p = parentPID(p); p <= 1 {
			break
		}
		if n, ok := r.names[p]; ok {
			return n
		}
	}
	return comm
}

func (r *serviceRegistry) watch(ctx context.Context, f *agentFlags, tr *capture.Tracer, log *slog.Logger) {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st, err := os.Stat(f.servicesFile)
		if err != nil || !st.ModTime().After(last) {
			continue
		}
		last = st.ModTime()
		names, err := serviceNames(f)
		if err != nil {
			log.Warn("services file", "err", err)
			continue
		}
		r.mu.Lock()
		for pid, name := range names {
			if r.names[pid] != name && tr != nil {
				if err := tr.TracePID(int(pid)); err != nil {
					log.Warn("trace pid", "pid", pid, "service", name, "err", err)
				}
			}
			r.names[pid] = name
		}
		r.mu.Unlock()
		log.Info("services file reloaded", "services", len(names))
	}
}

// parentPID reads a process's parent from procfs (0 when unknown).
func parentPID(pid uint32) uint32 {
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/stat")
	if err != nil {
		return 0
	}
	// The command name may hold spaces and parentheses: fields start
	// after the last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 2 {
		return 0
	}
	p, _ := strconv.ParseUint(fields[1], 10, 32)
	return uint32(p)
}

// jsonlOutput writes spans as JSON lines.
type jsonlOutput struct {
	mu  sync.Mutex
	bw  *bufio.Writer
	enc *json.Encoder
}

func (o *jsonlOutput) Add(s schemas.Span) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.enc.Encode(&s); err != nil {
		slog.Error("write span", "span", s.SpanID, "err", err)
	}
}

// spanOutput is where the agent's spans go: the engine through the
// exporter (with its spool), or a JSON-lines file. The returned func flushes
// and closes it; for the exporter it drains the queue and the spool within
// 20 seconds and leaves the rest on disk for the next start.
func spanOutput(ctx context.Context, f *agentFlags, reg *prometheus.Registry, log *slog.Logger) (pipeline.Output, func(), error) {
	if f.spansOut == "" {
		st, err := f.es.open()
		if err != nil {
			return nil, nil, err
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if err := st.EnsureTemplates(pctx, schemas.DefaultTemplateSettings); err != nil {
			log.Warn("index templates not installed; the engine may be down (spans are spooled) or the agent may lack the privilege", "err", err)
		}
		cancel()
		dir := f.spoolPath()
		// A deep queue absorbs bursts while the spool takes over from a
		// slow engine; Add blocks the pipeline briefly before it drops.
		exp, err := export.New(export.Config{Host: f.host, SpoolDir: dir, SpoolMaxBytes: f.spoolMax, QueueSize: 1 << 16, AddTimeout: 250 * time.Millisecond, Registerer: reg, Logger: log}, st)
		if err != nil {
			return nil, nil, err
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			// Run outlives ctx: the pipeline drains into it after SIGTERM,
			// and Close ends it.
			exp.Run(context.WithoutCancel(ctx))
		}()
		return exp, func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
			defer cancel()
			if err := exp.Close(cctx); err != nil {
				log.Warn("exporter closed with spans left", "err", err)
			}
			<-done
			st := exp.Stats()
			log.Info("exporter stopped", "stats", fmt.Sprintf("%+v", st))
		}, nil
	}
	w := os.Stdout
	if f.spansOut != "-" {
		file, err := os.Create(f.spansOut)
		if err != nil {
			return nil, nil, fmt.Errorf("spans-out: %w", err)
		}
		w = file
	}
	bw := bufio.NewWriterSize(w, 1<<16)
	o := &jsonlOutput{bw: bw, enc: json.NewEncoder(bw)}
	return o, func() {
		o.mu.Lock()
		bw.Flush()
		o.mu.Unlock()
		if w != os.Stdout {
			w.Close()
		}
	}, nil
}

// captureCollector exposes the capture's counters (kernel and user space)
// as Prometheus metrics, read at each scrape.
type captureCollector struct{ t *capture.Tracer }

var captureDescs = map[string]*prometheus.Desc{
	"events":    prometheus.NewDesc("deeptrace_capture_events_total", "Records the eBPF programs wrote to the ring buffer.", nil, nil),
	"dropped":   prometheus.NewDesc("deeptrace_capture_dropped_total", "Records lost because the ring buffer was full, per CPU.", []string{"cpu"}, nil),
	"bytes":     prometheus.NewDesc("deeptrace_capture_dropped_bytes_total", "Payload bytes in the lost records.", nil, nil),
	"truncated": prometheus.NewDesc("deeptrace_capture_truncated_calls_total", "Calls that moved more than the per-call capture limit.", nil, nil),
	"faults":    prometheus.NewDesc("deeptrace_capture_faults_total", "Payload reads from user memory that failed.", nil, nil),
	"decoded":   prometheus.NewDesc("deeptrace_capture_decoded_total", "Records read and decoded by the agent.", nil, nil),
	"malformed": prometheus.NewDesc("deeptrace_capture_malformed_total", "Records that could not be decoded.", nil, nil),
	"late":      prometheus.NewDesc("deeptrace_capture_late_total", "Data events that arrived after their stream had moved past them.", nil, nil),
	"gaps":      prometheus.NewDesc("deeptrace_capture_gaps_total", "Reorder waits that ended without the missing bytes.", nil, nil),
}

func (c captureCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range captureDescs {
		ch <- d
	}
}

func (c captureCollector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.t.Stats()
	if err != nil {
		return
	}
	counter := func(name string, v uint64) {
		ch <- prometheus.MustNewConstMetric(captureDescs[name], prometheus.CounterValue, float64(v))
	}
	counter("events", st.Events)
	for cpu, v := range st.DroppedPerCPU {
		ch <- prometheus.MustNewConstMetric(captureDescs["dropped"], prometheus.CounterValue, float64(v), strconv.Itoa(cpu))
	}
	counter("bytes", st.DroppedBytes)
	counter("truncated", st.TruncatedCalls)
	counter("faults", st.Faults)
	counter("decoded", st.Decoded)
	counter("malformed", st.Malformed)
	counter("late", st.Late)
	counter("gaps", st.Gaps)
}
