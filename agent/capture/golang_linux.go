//go:build linux && amd64

package capture

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/deeptrace/deeptrace/agent/gorun"
	"github.com/deeptrace/deeptrace/bpf"
)

// watchGo looks at a traced process's executable; for a Go program it tells
// the kernel side where the goid and parentGoid sit in runtime.g (so data
// events carry their goroutine, read through R14) and attaches the runtime
// probes that the Config asks for, with a PID filter. Failures leave the
// process traced without goroutines.
func (t *Tracer) watchGo(pid uint32) {
	if t.cfg.NoGoRuntime {
		return
	}
	exe := fmt.Sprintf("/proc/%d/exe", pid)
	fi, err := os.Stat(exe)
	if err != nil {
		return
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return
	}
	key := binKey{st.Dev, st.Ino}

	t.gomu.Lock()
	defer t.gomu.Unlock()
	if _, ok := t.goprocs[pid]; ok {
		return
	}
	bin, ok := t.bins[key]
	if !ok {
		bin, err = gorun.Inspect(exe)
		if err != nil {
			bin = nil // not Go, or unreadable: remembered as such
		}
		if len(t.bins) > 1024 {
			clear(t.bins)
		}
		t.bins[key] = bin
	}
	if bin == nil || !bin.RegABI || bin.GoidOffset == 0 || bin.GoidOffset > 0xffff {
		return
	}
	gp := &goProc{bin: bin}
	t.goprocs[pid] = gp
	info := bpf.CaptureGoInfo{GoidOff: uint16(bin.GoidOffset), ParentGoidOff: uint16(bin.ParentGoidOffset)}
	if err := t.objs.GoProcs.Put(pid, &info); err != nil {
		return
	}
	_ = t.bumpGen()

	if !t.cfg.GoCreation && !t.cfg.GoScheduling {
		return
	}
	ex, err := link.OpenExecutable(exe)
	if err != nil {
		return
	}
	if t.cfg.GoCreation && bin.ParentGoidOffset != 0 {
		for _, off := range bin.Newproc1Rets {
			l, err := ex.Uprobe("runtime.newproc1", t.objs.GoNewproc1Ret, &link.UprobeOptions{Address: off, PID: int(pid)})
			if err != nil {
				break
			}
			gp.links = append(gp.links, l)
		}
	}
	if t.cfg.GoScheduling && bin.Casgstatus != 0 {
		if l, err := ex.Uprobe("runtime.casgstatus", t.objs.GoCasgstatus, &link.UprobeOptions{Address: bin.Casgstatus, PID: int(pid)}); err == nil {
			gp.links = append(gp.links, l)
		}
	}
}

// GoProcess reports whether capture reads goroutines of a process, and the
// number of runtime probes attached to it.
func (t *Tracer) GoProcess(pid int) (ok bool, probes int) {
	t.gomu.Lock()
	defer t.gomu.Unlock()
	gp := t.goprocs[uint32(pid)]
	if gp == nil {
		return false, 0
	}
	return true, len(gp.links)
}

func (t *Tracer) forgetGo(pid uint32) {
	t.gomu.Lock()
	defer t.gomu.Unlock()
	t.forgetGoLocked(pid)
}

func (t *Tracer) forgetGoLocked(pid uint32) {
	gp := t.goprocs[pid]
	if gp == nil {
		return
	}
	for _, l := range gp.links {
		l.Close()
	}
	delete(t.goprocs, pid)
	if err := t.objs.GoProcs.Delete(pid); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		_ = err // the exec hook may have removed it already
	}
}

// deadGoProcs forgets the Go processes that exited and returns their pids.
func (t *Tracer) deadGoProcs() []uint32 {
	t.gomu.Lock()
	defer t.gomu.Unlock()
	var dead []uint32
	for pid := range t.goprocs {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			dead = append(dead, pid)
		}
	}
	for _, pid := range dead {
		t.forgetGoLocked(pid)
	}
	return dead
}
