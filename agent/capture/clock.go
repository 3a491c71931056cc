//go:build linux

package capture

import (
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// MonotonicNs is CLOCK_MONOTONIC in nanoseconds, the clock of the kernel
// side's timestamps (bpf_ktime_get_ns).
func MonotonicNs() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// Clock converts event timestamps (CLOCK_MONOTONIC) to wall-clock time. The
// offset between the clocks moves when NTP steps or slews the wall clock;
// call Calibrate now and then (the Tracer does every second).
type Clock struct {
	offset atomic.Int64 // realtime - monotonic, ns
}

// NewClock returns a calibrated Clock.
func NewClock() *Clock {
	c := &Clock{}
	c.Calibrate()
	return c
}

// Calibrate measures the offset between the clocks, keeping the reading
// with the tightest bracket of a few.
func (c *Clock) Calibrate() {
	best := int64(-1)
	var off int64
	for i := 0; i < 5; i++ {
		var m1, r, m2 unix.Timespec
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &m1)
		_ = unix.ClockGettime(unix.CLOCK_REALTIME, &r)
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &m2)
		if w := m2.Nano() - m1.Nano(); best < 0 || w < best {
			best = w
			off = r.Nano() - (m1.Nano()+m2.Nano())/2
		}
	}
	c.offset.Store(off)
}

// Wall returns the wall-clock time of a monotonic timestamp.
func (c *Clock) Wall(mono uint64) time.Time {
	return time.Unix(0, int64(mono)+c.offset.Load())
}

// WallNs is Wall in Unix nanoseconds.
func (c *Clock) WallNs(mono uint64) int64 { return int64(mono) + c.offset.Load() }
