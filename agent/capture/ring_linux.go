//go:build linux && amd64

package capture

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ring reads the BPF ring buffer in place. It maps the buffer the way the
// kernel lays it out (the consumer position on a page of its own, writable;
// the producer position, then the data pages mapped twice, so that a record
// that wraps is contiguous), hands out each committed record as a slice of
// that mapping, and moves the consumer position when told: once per batch,
// not once per record. Each move is a write to a cache line the producing
// CPUs read on every reservation, and records stay readable until it.
type ring struct {
	cons *uint64 // consumer position: ours to write
	prod *uint64 // producer position: the kernel's
	data []byte  // 2 × size bytes
	mask uint64

	consMem, prodMem []byte
	epfd, evfd       int

	mu     sync.Mutex
	users  int  // readers between use and done
	closed bool // the mapping goes when the last user is done
}

// Ring buffer record header (kernel/bpf/ringbuf.c): the length, with the
// busy bit set until the record is committed and the discard bit when it
// was dropped, then the page offset the kernel keeps for itself.
const (
	ringHdrSize    = 8
	ringBusyBit    = 1 << 31
	ringDiscardBit = 1 << 30
)

var errRingClosed = errors.New("capture: ring buffer closed")

func newRing(m *ebpf.Map) (*ring, error) {
	size := int(m.MaxEntries())
	if size <= 0 || size&(size-1) != 0 {
		return nil, fmt.Errorf("capture: ring buffer size %d is not a power of two", size)
	}
	fd := m.FD()
	page := os.Getpagesize()
	r := &ring{mask: uint64(size - 1), epfd: -1, evfd: -1}
	var err error
	if r.consMem, err = unix.Mmap(fd, 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return nil, fmt.Errorf("capture: map ring buffer consumer page: %w", err)
	}
	if r.prodMem, err = unix.Mmap(fd, int64(page), page+2*size, unix.PROT_READ, unix.MAP_SHARED); err != nil {
		r.unmap()
		return nil, fmt.Errorf("capture: map ring buffer data: %w", err)
	}
	r.cons = (*uint64)(unsafe.Pointer(&r.consMem[0]))
	r.prod = (*uint64)(unsafe.Pointer(&r.prodMem[0]))
	r.data = r.prodMem[page:]
	if r.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		r.unmap()
		return nil, fmt.Errorf("capture: epoll: %w", err)
	}
	if r.evfd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		r.unmap()
		return nil, fmt.Errorf("capture: eventfd: %w", err)
	}
	// Edge-triggered: wait returns on the kernel's wakeups, not whenever
	// records are pending (they mostly are, and are read by the poll).
	for _, f := range []int{fd, r.evfd} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(f)}
		if err := unix.EpollCtl(r.epfd, unix.EPOLL_CTL_ADD, f, &ev); err != nil {
			r.unmap()
			return nil, fmt.Errorf("capture: epoll add: %w", err)
		}
	}
	return r, nil
}

func (r *ring) unmap() {
	if r.prodMem != nil {
		unix.Munmap(r.prodMem)
		r.prodMem, r.data = nil, nil
	}
	if r.consMem != nil {
		unix.Munmap(r.consMem)
		r.consMem = nil
	}
	for _, fd := range []*int{&r.epfd, &r.evfd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// use marks a reader at work: the mapping stays until its done, even when
// Close comes first. It fails once the ring is closed.
func (r *ring) use() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errRingClosed
	}
	r.users++
	return nil
}

func (r *ring) done() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.users--; r.users == 0 && r.closed {
		r.unmap()
	}
}

// Close wakes a reader waiting in wait and frees the mapping once no reader
// uses it.
func (r *ring) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.closed = true
	var one [8]byte
	one[0] = 1
	unix.Write(r.evfd, one[:])
	if r.users == 0 {
		r.unmap()
	}
}

// wait blocks until the kernel wakes the reader (a backlog over
// WakeupBytes), the ring is closed, or timeout passes. Records written with
// BPF_RB_NO_WAKEUP wake nobody: they wait for the timeout.
func (r *ring) wait(timeout time.Duration) error {
	var evs [2]unix.EpollEvent
	ms := int((timeout + time.Millisecond - 1) / time.Millisecond)
	for {
		n, err := unix.EpollWait(r.epfd, evs[:], ms)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("capture: wait for ring buffer: %w", err)
		}
		for _, ev := range evs[:n] {
			if int(ev.Fd) == r.evfd {
				return errRingClosed
			}
		}
		return nil
	}
}

// consumer is where reading resumes; producer is where the kernel writes
// next (records before it are reserved, not all committed).
func (r *ring) consumer() uint64 { return atomic.LoadUint64(r.cons) }
func (r *ring) producer() uint64 { return atomic.LoadUint64(r.prod) }

// record returns the record at pos (before the producer position) and the
// position after it. busy reports a record reserved but not yet committed:
// nothing after it may be read yet. A discarded record comes back empty.
func (r *ring) record(pos uint64) (rec []byte, next uint64, busy bool) {
	start := pos & r.mask
	// An atomic load orders the header before the data: the kernel
	// clears the busy bit with an xchg after writing the record.
	hdr := atomic.LoadUint32((*uint32)(unsafe.Pointer(&r.data[start])))
	if hdr&ringBusyBit != 0 {
		return nil, pos, true
	}
	n := uint64(hdr &^ (ringBusyBit | ringDiscardBit))
	next = pos + (ringHdrSize+n+7)&^7
	if hdr&ringDiscardBit != 0 {
		return nil, next, false
	}
	b := start + ringHdrSize
	if b+n > uint64(len(r.data)) {
		return nil, next, false // cannot be: the kernel caps records at the ring's size
	}
	return r.data[b : b+n : b+n], next, false
}

// release gives the space before pos back to the kernel: records there
// must no longer be used.
func (r *ring) release(pos uint64) { atomic.StoreUint64(r.cons, pos) }

// holds reports whether p points into the ring's mapping.
func (r *ring) holds(p []byte) bool {
	if len(p) == 0 || len(r.data) == 0 {
		return false
	}
	a := uintptr(unsafe.Pointer(unsafe.SliceData(p)))
	lo := uintptr(unsafe.Pointer(unsafe.SliceData(r.data)))
	return a >= lo && a < lo+uintptr(len(r.data))
}
