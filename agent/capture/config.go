package capture

import (
	"fmt"
	"time"
)

// Limits of the configuration.
const (
	// MaxChunk is the largest payload one event carries (bpf/capture.h).
	MaxChunk = 16384
	// MinChunk is the smallest payload per event a Config may ask for.
	MinChunk = 4096
)

// Config says what to trace and how much to keep. The zero value is
// usable: it traces nothing until filters are added (or All is set), with
// 4 KiB of payload per event and 64 KiB per call.
type Config struct {
	// All traces every process (except denied ones) when no process
	// filter selects; otherwise only processes that PIDs, Comms or
	// Cgroups select are traced.
	All bool
	// PIDs, Comms (process names, at most 15 bytes) and Cgroups (cgroup
	// v2 ids, see CgroupID) select processes; any match selects. A cgroup
	// selects its descendants too.
	PIDs    []int
	Comms   []string
	Cgroups []uint64
	// DenyPIDs are never traced. The agent's own pid always is denied.
	DenyPIDs []int
	// Ports and NetNS select connections of the traced processes: by
	// local or remote port, by network namespace inode (see NetNSInode).
	// Empty means all.
	Ports []uint16
	NetNS []uint32

	// ChunkBytes is the payload carried per event (MinChunk..MaxChunk,
	// default MinChunk). A call that moved more is split across events.
	ChunkBytes int
	// MaxCallBytes is the payload captured per call (default 64 KiB);
	// bytes beyond it are counted in Size but not copied.
	MaxCallBytes int
	// RingBytes is the ring buffer size, a power of two (default 16 MiB).
	RingBytes int
	// WakeupBytes: the kernel wakes the reader when this much is pending
	// (default RingBytes/8); below it the reader polls every PollInterval.
	WakeupBytes int
	// PollInterval is how often the reader drains the ring (default 10ms;
	// an eighth of it after a drain that found WakeupBytes/2 or more).
	PollInterval time.Duration
	// ReorderWindow is how long a data event may wait for the events
	// that precede it on its stream (default 20ms).
	ReorderWindow time.Duration

	// NoGoRuntime turns off goroutine tracking. By default capture reads,
	// for each traced Go program, where runtime.g keeps the goroutine id
	// and its parent's (from the binary's DWARF); data events then carry
	// GoID and ParentGoID, read through R14 at the system call, with no
	// uprobe. The first data event of each goroutine also yields an
	// event.GoCreate (parent -> child, at the time of that event).
	NoGoRuntime bool
	// GoCreation also probes runtime.newproc1 (uprobes on its RETs) and
	// reports every goroutine creation as it happens, including
	// goroutines that never touch a socket. Costly: a uprobe trap per
	// goroutine, and net/http starts one per request.
	GoCreation bool
	// ExactSendSeq hooks TCP's send path (tcp_sendmsg_locked, under the
	// socket lock) from the start. Without it, a send's TCP sequence is
	// write_seq at entry, checked at exit: exact unless another thread
	// sent on the same socket meanwhile. Capture flags such calls (their
	// sequence is a guess, counted in Stats.SendOverlaps) and attaches the
	// hook at the first, exact from then on. The hook costs every send on
	// the host, traced or not (~100-200 ns here), hence not by default.
	ExactSendSeq bool
	// GoScheduling also reports each goroutine switch to running
	// (event.GoRunning) from runtime.casgstatus: a uprobe trap per switch.
	GoScheduling bool
}

func (c *Config) withDefaults() Config {
	d := *c
	if d.ChunkBytes == 0 {
		d.ChunkBytes = MinChunk
	}
	if d.MaxCallBytes == 0 {
		d.MaxCallBytes = 64 << 10
	}
	if d.RingBytes == 0 {
		d.RingBytes = 16 << 20
	}
	if d.WakeupBytes == 0 {
		d.WakeupBytes = d.RingBytes / 8
	}
	if d.PollInterval == 0 {
		d.PollInterval = 10 * time.Millisecond
	}
	if d.ReorderWindow == 0 {
		d.ReorderWindow = 20 * time.Millisecond
	}
	return d
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	d := c.withDefaults()
	switch {
	case d.ChunkBytes < MinChunk || d.ChunkBytes > MaxChunk:
		return fmt.Errorf("capture: ChunkBytes %d: want %d..%d", d.ChunkBytes, MinChunk, MaxChunk)
	case d.MaxCallBytes < d.ChunkBytes:
		return fmt.Errorf("capture: MaxCallBytes %d is below ChunkBytes %d", d.MaxCallBytes, d.ChunkBytes)
	case d.MaxCallBytes > 1<<30:
		return fmt.Errorf("capture: MaxCallBytes %d: want at most 1 GiB", d.MaxCallBytes)
	case d.RingBytes < 1<<16 || d.RingBytes&(d.RingBytes-1) != 0:
		return fmt.Errorf("capture: RingBytes %d: want a power of two >= 64 KiB", d.RingBytes)
	case d.WakeupBytes <= 0 || d.WakeupBytes > d.RingBytes:
		return fmt.Errorf("capture: WakeupBytes %d: want 1..RingBytes", d.WakeupBytes)
	case d.PollInterval < 0 || d.ReorderWindow < 0:
		return fmt.Errorf("capture: PollInterval and ReorderWindow must not be negative")
	}
	for _, n := range d.Comms {
		if n == "" || len(n) > 15 {
			return fmt.Errorf("capture: Comms %q: want 1..15 bytes (the kernel's comm)", n)
		}
	}
	for _, p := range append(append([]int{}, d.PIDs...), d.DenyPIDs...) {
		if p <= 0 {
			return fmt.Errorf("capture: pid %d: want > 0", p)
		}
	}
	return nil
}
