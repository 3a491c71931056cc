//go:build linux && amd64

package capture

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/agent/gorun"
	"github.com/deeptrace/deeptrace/bpf"
)

// Filter values and bits of bpf/capture.h.
const (
	filterAllow = 1
	filterDeny  = 2

	procFilterPID    = 1
	procFilterComm   = 2
	procFilterCgroup = 4

	connFilterPort  = 1
	connFilterNetNS = 2
)

// Tracer owns the loaded programs, their maps and links, and the ring
// buffer reader. Its filter methods are safe for concurrent use; Run is
// called once at a time.
type Tracer struct {
	cfg   Config
	objs  bpf.CaptureObjects
	links []link.Link
	ring  *ring
	clock *Clock

	mu       sync.Mutex // filter sets and settings
	settings bpf.CaptureSettings
	pids     map[uint32]uint8
	comms    map[string]bool
	cgroups  map[uint64]bool
	ports    map[uint16]bool
	netns    map[uint32]bool

	gomu    sync.Mutex // Go runtime probes
	goprocs map[uint32]*goProc
	bins    map[binKey]*gorun.Binary

	running atomic.Bool
	user    userStats

	sendMu   sync.Mutex // the tcp_sendmsg_locked hook
	sendHook link.Link

	front atomic.Pointer[readMark] // how far the reader has gone
}

// readMark says how far the reader has gone: every event whose bytes
// existed before at (monotonic ns, event.Event.DataAt) is among the first
// sent events handed on. A call's record is written when it returns, so a
// write blocked for longer than the pipeline's SourceDelay can still come
// after; its span is then a late one.
type readMark struct{ at, sent uint64 }

type userStats struct {
	decoded, malformed, late, gaps, held, inspectDrops atomic.Uint64
}

type binKey struct{ dev, ino uint64 }

type goKey struct {
	pid  uint32
	goid uint64
}

type goProc struct {
	links []link.Link
	bin   *gorun.Binary
}

// Open loads and attaches the capture programs and applies cfg's filters.
// Errors from a kernel or process that cannot run eBPF wrap ErrUnavailable
// and name the missing privilege.
func Open(cfg Config) (*Tracer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := cfg.withDefaults()
	// The capture programs (tp_btf, uprobes through the PMU) need no
	// tracefs; tracepoints by name and the uprobe fallback do.
	_ = EnsureTracefs()

	spec, err := bpf.LoadCapture()
	if err != nil {
		return nil, fmt.Errorf("capture: read embedded programs: %w", err)
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("capture: possible CPUs: %w", err)
	}
	spec.Maps[bpf.CaptureMapEvents].MaxEntries = uint32(c.RingBytes)
	spec.Maps[bpf.CaptureMapScratch].MaxEntries = uint32(ncpu)
	for name, v := range map[string]any{
		bpf.CaptureVarChunkSize:    uint32(c.ChunkBytes),
		bpf.CaptureVarMaxCallBytes: uint32(c.MaxCallBytes),
		bpf.CaptureVarWakeupBytes:  uint64(c.WakeupBytes),
		bpf.CaptureVarWakeupCheck:  uint64(min(max(c.WakeupBytes/4, 8), 64<<10)),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("capture: set %s: %w", name, err)
		}
	}

	t := &Tracer{
		cfg:     c,
		clock:   NewClock(),
		pids:    make(map[uint32]uint8),
		comms:   make(map[string]bool),
		cgroups: make(map[uint64]bool),
		ports:   make(map[uint16]bool),
		netns:   make(map[uint32]bool),
		goprocs: make(map[uint32]*goProc),
		bins:    make(map[binKey]*gorun.Binary),
	}
	if err := spec.LoadAndAssign(&t.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, unavailable("load eBPF programs", fmt.Errorf("%w (verifier: %s)", err, lastLines(ve.Log, 3)))
		}
		return nil, unavailable("load eBPF programs", err)
	}

	t.mu.Lock()
	t.pids[uint32(os.Getpid())] = filterDeny
	for _, p := range c.DenyPIDs {
		t.pids[uint32(p)] = filterDeny
	}
	for _, p := range c.PIDs {
		if t.pids[uint32(p)] != filterDeny {
			t.pids[uint32(p)] = filterAllow
		}
	}
	for _, n := range c.Comms {
		t.comms[n] = true
	}
	for _, g := range c.Cgroups {
		t.cgroups[g] = true
	}
	for _, p := range c.Ports {
		t.ports[p] = true
	}
	for _, n := range c.NetNS {
		t.netns[n] = true
	}
	err = t.syncMapsLocked()
	t.mu.Unlock()
	if err != nil {
		t.Close()
		return nil, err
	}

	for _, p := range []*ebpf.Program{t.objs.SysEnter, t.objs.SysExit, t.objs.SchedExec} {
		l, err := link.AttachTracing(link.TracingOptions{Program: p})
		if err != nil {
			t.Close()
			return nil, unavailable("attach "+p.String(), err)
		}
		t.links = append(t.links, l)
	}
	if c.ExactSendSeq {
		if err := t.attachSendHook(); err != nil {
			t.Close()
			return nil, unavailable("attach tcp_sendmsg_locked", err)
		}
	}
	t.ring, err = newRing(t.objs.Events)
	if err != nil {
		t.Close()
		return nil, err
	}
	for _, p := range c.PIDs {
		t.watchGo(uint32(p))
	}
	return t, nil
}

func lastLines(log []string, n int) string {
	if len(log) > n {
		log = log[len(log)-n:]
	}
	return fmt.Sprint(log)
}

// attachSendHook attaches the tcp_sendmsg_locked program, once: from then
// on sends that overlap another on their socket get their exact sequence
// too.
func (t *Tracer) attachSendHook() error {
	t.sendMu.Lock()
	defer t.sendMu.Unlock()
	if t.sendHook != nil {
		return nil
	}
	l, err := link.AttachTracing(link.TracingOptions{Program: t.objs.TcpSendmsgLocked})
	if err != nil {
		return err
	}
	t.sendHook = l
	return nil
}

// maxBatch bounds the events handed over in one call of Read's function.
const maxBatch = 4096

// releaseEvery is how much of the ring buffer the reader works through
// before it gives the space back to the kernel, within one drain.
const releaseEvery = 1 << 20

// Read reads events until ctx ends or the Tracer closes, and hands them to
// fn in batches: data events of a connection in stream order per direction,
// goroutine events in arrival order. fn runs on the reader's goroutine and
// must keep neither the slices nor the events' Payloads: payloads point into
// the ring buffer and are valid until fn returns (copy what you keep). While
// fn runs nothing is read: a slow fn fills the ring buffer, where the kernel
// counts what it drops (Stats).
//
// Read is the cheap way in: no copy of the payloads, and no goroutine
// wake-up per event as when handing events one by one through a channel.
func (t *Tracer) Read(ctx context.Context, fn func(events []event.Event, goEvents []event.GoEvent)) error {
	return t.read(ctx, false, fn)
}

// read is Read; with owned, payloads are copied out of the ring buffer as
// they are decoded, and fn may keep them.
func (t *Tracer) read(ctx context.Context, owned bool, fn func(events []event.Event, goEvents []event.GoEvent)) error {
	if !t.running.CompareAndSwap(false, true) {
		return errors.New("capture: Read or Run called twice")
	}
	defer t.running.Store(false)
	if err := t.ring.use(); err != nil {
		return nil // closed
	}
	defer t.ring.done()

	var (
		batch  = make([]event.Event, 0, 256)
		gbatch = make([]event.GoEvent, 0, 64)
	)
	var sent uint64
	t.front.Store(nil)
	flush := func() {
		if len(batch) > 0 || len(gbatch) > 0 {
			fn(batch, gbatch)
			sent += uint64(len(batch))
			clear(batch) // drop payload references
			batch, gbatch = batch[:0], gbatch[:0]
		}
	}
	ord := newOrderer(uint64(t.cfg.ReorderWindow), t.cfg.MaxCallBytes, func(e *event.Event) {
		batch = append(batch, *e)
		if len(batch) >= maxBatch {
			flush()
		}
	})
	roles := newRoles("/proc")
	dec := newDecoder()
	// Records up to pos are read; those before released are the kernel's
	// again. Before a release, what the orderer still holds gets its own
	// copy of its payload.
	pos := t.ring.consumer()
	released, drained := pos, pos
	release := func() {
		flush()
		if !owned {
			ord.own(t.ring.holds, dec.own)
		}
		t.ring.release(pos)
		released = pos
	}
	finish := func() error {
		ord.flushAll()
		release()
		return nil
	}

	inspect := make(chan uint32, 256)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for pid := range inspect {
			t.watchGo(pid)
		}
	}()
	defer func() {
		close(inspect)
		wg.Wait()
	}()
	seen := make(map[uint32]bool)
	goSeen := make(map[goKey]struct{})

	var (
		ev         event.Event // reused: the orderer copies what it holds
		ge         event.GoEvent
		lastCal    = MonotonicNs()
		lastJanit  = lastCal
		now        = lastCal
		sinceClock int
		sendHooked bool
	)
	for {
		if ctx.Err() != nil {
			return finish()
		}
		// After a drain that found a burst, look again sooner: records
		// beyond the wakeup threshold wake the reader only once.
		wait := t.cfg.PollInterval
		if uint64(pos-drained) >= uint64(t.cfg.WakeupBytes)/2 {
			wait /= 8
		}
		drained = pos
		if err := t.ring.wait(wait); err != nil {
			if errors.Is(err, errRingClosed) {
				return finish()
			}
			return err
		}
		// Every record of a call that returned before drainAt is
		// reserved by the time the producer position is read.
		drainAt, complete := MonotonicNs(), true
		for prod := t.ring.producer(); pos < prod; {
			raw, next, busy := t.ring.record(pos)
			if busy {
				complete = false
				break // not committed yet: the next drain resumes here
			}
			pos = next
			if pos-released >= releaseEvery {
				release()
			}
			if raw == nil {
				continue // discarded by the kernel
			}
			if sinceClock++; sinceClock == 256 {
				sinceClock, now = 0, MonotonicNs()
			}
			if len(raw) == 0 {
				t.user.malformed.Add(1)
				continue
			}
			switch raw[0] {
			case recData:
				e := &ev
				if err := dec.data(raw, e); err != nil {
					t.user.malformed.Add(1)
					continue
				}
				t.user.decoded.Add(1)
				if raw[offFlags]&flagSeqGuess != 0 && !sendHooked {
					// Threads of a traced process send on one
					// socket at once: their calls need the hook.
					// One try (Stats.SendHook says whether it
					// took).
					sendHooked = true
					t.attachSendHook()
				}
				if owned {
					e.Payload = dec.own(e.Payload)
				}
				if !seen[e.PID] && !t.cfg.NoGoRuntime {
					select {
					case inspect <- e.PID:
						if len(seen) > 1<<16 {
							clear(seen)
						}
						seen[e.PID] = true
					default:
						t.user.inspectDrops.Add(1) // retried on its next event
					}
				}
				roles.resolve(e, now)
				if e.ParentGoID != 0 && !t.cfg.GoCreation {
					k := goKey{e.PID, e.GoID}
					if _, ok := goSeen[k]; !ok {
						if len(goSeen) > 1<<18 {
							clear(goSeen)
						}
						goSeen[k] = struct{}{}
						gbatch = append(gbatch, event.GoEvent{Kind: event.GoCreate, Ns: e.EnterNs, PID: e.PID, TID: e.TID, GoID: e.GoID, ParentGoID: e.ParentGoID})
					}
				}
				ord.push(e, now)
			case recGo:
				if err := dec.goEvent(raw, &ge); err != nil {
					t.user.malformed.Add(1)
					continue
				}
				t.user.decoded.Add(1)
				gbatch = append(gbatch, ge)
				if len(gbatch) >= maxBatch {
					flush()
				}
			case recExec:
				if len(raw) >= execRecSize {
					pid := le.Uint32(raw[4:])
					delete(seen, pid)
					t.forgetGo(pid)
				}
			default:
				t.user.malformed.Add(1)
			}
		}
		now = MonotonicNs()
		ord.expire(now)
		release()
		if complete {
			if o, ok := ord.oldest(); ok && o < drainAt {
				drainAt = o
			}
			t.front.Store(&readMark{at: drainAt, sent: sent})
		}
		t.user.late.Store(ord.late)
		t.user.gaps.Store(ord.gaps)
		t.user.held.Store(uint64(ord.heldCount()))
		if now-lastCal > 1e9 {
			lastCal = now
			t.clock.Calibrate()
		}
		if now-lastJanit > 10e9 {
			lastJanit = now
			for _, pid := range t.deadGoProcs() {
				delete(seen, pid)
			}
		}
	}
}

// Run is Read through channels: it sends each event on out and each
// goroutine event on goOut (which may be nil). Sends block. The events'
// payloads are copies the receiver may keep.
func (t *Tracer) Run(ctx context.Context, out chan<- event.Event, goOut chan<- event.GoEvent) error {
	done := ctx.Done()
	return t.read(ctx, true, func(evs []event.Event, gevs []event.GoEvent) {
		for i := range evs {
			select {
			case out <- evs[i]:
			case <-done:
				return
			}
		}
		if goOut == nil {
			return
		}
		for _, g := range gevs {
			select {
			case goOut <- g:
			case <-done:
				return
			}
		}
	})
}

// Run opens a Tracer for cfg, sends its data events on out until ctx ends,
// and closes it.
func Run(ctx context.Context, cfg Config, out chan<- event.Event) error {
	t, err := Open(cfg)
	if err != nil {
		return err
	}
	defer t.Close()
	return t.Run(ctx, out, nil)
}

// Frontier says how far Run has read (pipeline.FrontierSource): every
// event whose bytes existed before monoNs (event.Event.DataAt) is among the
// first sent events it sent. ok is false until its first pass over the
// ring buffer.
func (t *Tracer) Frontier() (monoNs, sent uint64, ok bool) {
	m := t.front.Load()
	if m == nil {
		return 0, 0, false
	}
	return m.at, m.sent, true
}

// Clock converts the events' monotonic timestamps to wall-clock time.
func (t *Tracer) Clock() *Clock { return t.clock }

// Close detaches the programs and frees the kernel objects. Run returns.
func (t *Tracer) Close() error {
	t.gomu.Lock()
	for pid := range t.goprocs {
		t.forgetGoLocked(pid)
	}
	t.gomu.Unlock()
	for _, l := range t.links {
		l.Close()
	}
	t.links = nil
	t.sendMu.Lock()
	if t.sendHook != nil {
		t.sendHook.Close()
		t.sendHook = nil
	}
	t.sendMu.Unlock()
	if t.ring != nil {
		t.ring.Close()
	}
	return t.objs.Close()
}

// Stats are the capture's counters since Open.
type Stats struct {
	// From the kernel, summed over CPUs.
	Events         uint64 // records written to the ring buffer
	Dropped        uint64 // records lost because the ring buffer was full
	DroppedBytes   uint64 // payload bytes in the lost records
	TruncatedCalls uint64 // calls that moved more than MaxCallBytes
	Faults         uint64 // payload reads from user memory that failed
	GoEvents       uint64 // goroutine records written
	// SendOverlaps counts sends that overlapped another on their socket
	// before the tcp_sendmsg_locked hook was attached: their TCP
	// sequence is a guess (see Config.ExactSendSeq).
	SendOverlaps uint64
	// DroppedPerCPU is Dropped per CPU.
	DroppedPerCPU []uint64

	// From user space.
	Decoded   uint64 // records read and decoded
	Malformed uint64 // records that could not be decoded
	Late      uint64 // data events that arrived after their stream had moved past them
	Gaps      uint64 // reorder waits that ended without the missing bytes
	Held      uint64 // data events waiting for their predecessors now
	// SendHook reports the tcp_sendmsg_locked hook attached.
	SendHook bool
}

// Stats reads the counters.
func (t *Tracer) Stats() (Stats, error) {
	var s Stats
	for idx, dst := range map[uint32]*uint64{
		0: &s.Events, 1: &s.Dropped, 2: &s.DroppedBytes, 3: &s.TruncatedCalls, 4: &s.Faults, 5: &s.GoEvents, 6: &s.SendOverlaps,
	} {
		var per []uint64
		if err := t.objs.Counters.Lookup(idx, &per); err != nil {
			return s, fmt.Errorf("capture: read counter %d: %w", idx, err)
		}
		for _, v := range per {
			*dst += v
		}
		if idx == 1 {
			s.DroppedPerCPU = per
		}
	}
	s.Decoded = t.user.decoded.Load()
	s.Malformed = t.user.malformed.Load()
	s.Late = t.user.late.Load()
	s.Gaps = t.user.gaps.Load()
	s.Held = t.user.held.Load()
	t.sendMu.Lock()
	s.SendHook = t.sendHook != nil
	t.sendMu.Unlock()
	return s, nil
}

// ProgramStat is one program's run count and total run time, from the
// kernel's BPF statistics (zero unless EnableKernelStats is in force).
type ProgramStat struct {
	Name    string
	Runs    uint64
	RunTime time.Duration
	// Missed counts runs skipped because another BPF program was running
	// on the CPU: calls the capture did not see.
	Missed uint64
}

// ProgramStats reads the kernel's statistics of the attached programs.
func (t *Tracer) ProgramStats() ([]ProgramStat, error) {
	var out []ProgramStat
	for name, p := range map[string]*ebpf.Program{
		"sys_enter": t.objs.SysEnter, "sys_exit": t.objs.SysExit, "tcp_sendmsg_locked": t.objs.TcpSendmsgLocked,
		"go_newproc1_ret": t.objs.GoNewproc1Ret, "go_casgstatus": t.objs.GoCasgstatus,
	} {
		ps, err := p.Stats()
		if err != nil {
			return nil, fmt.Errorf("capture: stats of %s: %w", name, err)
		}
		out = append(out, ProgramStat{Name: name, Runs: ps.RunCount, RunTime: ps.Runtime, Missed: ps.RecursionMisses})
	}
	return out, nil
}

// EnableKernelStats turns on the kernel's BPF run-time statistics (they cost
// a little on every program run) until the returned Closer is closed.
func EnableKernelStats() (interface{ Close() error }, error) {
	return ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
}
