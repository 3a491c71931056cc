//go:build linux && amd64

package capture

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/deeptrace/deeptrace/bpf"
)

// TracePID adds a process to the traced set, and attaches the Go runtime
// probes before returning when it is a Go program, so its first data
// events already carry goroutine ids.
func (t *Tracer) TracePID(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("capture: TracePID %d: want > 0", pid)
	}
	t.mu.Lock()
	if t.pids[uint32(pid)] == filterDeny {
		t.mu.Unlock()
		return fmt.Errorf("capture: TracePID %d: the pid is denied", pid)
	}
	t.pids[uint32(pid)] = filterAllow
	err := t.syncMapsLocked()
	t.mu.Unlock()
	if err == nil {
		t.watchGo(uint32(pid))
	}
	return err
}

// UntracePID removes a process from the traced set.
func (t *Tracer) UntracePID(pid int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pids[uint32(pid)] == filterAllow {
		delete(t.pids, uint32(pid))
		if err := t.objs.PidFilter.Delete(uint32(pid)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("capture: untrace pid %d: %w", pid, err)
		}
	}
	return t.syncMapsLocked()
}

// DenyPID excludes a process whatever the other filters say.
func (t *Tracer) DenyPID(pid int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pids[uint32(pid)] = filterDeny
	return t.syncMapsLocked()
}

// SetComms replaces the process names that select processes (the thread
// group leader's comm, at most 15 bytes). None disables the filter.
func (t *Tracer) SetComms(names ...string) error {
	for _, n := range names {
		if n == "" || len(n) > 15 {
			return fmt.Errorf("capture: comm %q: want 1..15 bytes", n)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	replaceFilter(t.comms, t.objs.CommFilter, names, func(n string) any { return commKey(n) })
	return t.syncMapsLocked()
}

// SetCgroups replaces the cgroup v2 ids (see CgroupID) that select
// processes, with their descendants. None disables the filter.
func (t *Tracer) SetCgroups(ids ...uint64) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	replaceFilter(t.cgroups, t.objs.CgroupFilter, ids, func(id uint64) any { return id })
	return t.syncMapsLocked()
}

// SetPorts replaces the ports (local or remote) that select connections.
// None traces all ports.
func (t *Tracer) SetPorts(ports ...uint16) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	replaceFilter(t.ports, t.objs.PortFilter, ports, func(p uint16) any { return p })
	return t.syncMapsLocked()
}

// SetNetNS replaces the network namespaces (inode numbers, see NetNSInode)
// whose connections are traced. None traces every namespace.
func (t *Tracer) SetNetNS(inodes ...uint32) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	replaceFilter(t.netns, t.objs.NetnsFilter, inodes, func(n uint32) any { return n })
	return t.syncMapsLocked()
}

// replaceFilter makes keys the whole of a filter set, deleting the old
// keys from the filter's BPF map (mapKey gives a key's map form);
// syncMapsLocked then writes the new ones.
func replaceFilter[K comparable](set map[K]bool, m *ebpf.Map, keys []K, mapKey func(K) any) {
	for k := range set {
		_ = m.Delete(mapKey(k))
	}
	clear(set)
	for _, k := range keys {
		set[k] = true
	}
}

func commKey(n string) bpf.CaptureCommKey {
	var k bpf.CaptureCommKey
	for i := 0; i < len(n) && i < len(k.Comm)-1; i++ {
		k.Comm[i] = int8(n[i])
	}
	return k
}

// syncMapsLocked writes the filter sets to their maps, then the settings
// with a new generation: each thread recomputes its verdict on its next
// call.
func (t *Tracer) syncMapsLocked() error {
	put := func(m *ebpf.Map, k, v any, what string) error {
		if err := m.Put(k, v); err != nil {
			return fmt.Errorf("capture: set %s filter: %w", what, err)
		}
		return nil
	}
	allow := false
	for pid, v := range t.pids {
		if err := put(t.objs.PidFilter, pid, v, "pid"); err != nil {
			return err
		}
		allow = allow || v == filterAllow
	}
	for n := range t.comms {
		if err := put(t.objs.CommFilter, commKey(n), uint8(filterAllow), "comm"); err != nil {
			return err
		}
	}
	for id := range t.cgroups {
		if err := put(t.objs.CgroupFilter, id, uint8(filterAllow), "cgroup"); err != nil {
			return err
		}
	}
	for p := range t.ports {
		if err := put(t.objs.PortFilter, p, uint8(filterAllow), "port"); err != nil {
			return err
		}
	}
	for n := range t.netns {
		if err := put(t.objs.NetnsFilter, n, uint8(filterAllow), "netns"); err != nil {
			return err
		}
	}
	var proc, conn uint32
	if !t.cfg.All {
		if allow {
			proc |= procFilterPID
		}
		if len(t.comms) > 0 {
			proc |= procFilterComm
		}
		if len(t.cgroups) > 0 {
			proc |= procFilterCgroup
		}
		if proc == 0 {
			proc = procFilterPID // an empty selection selects nothing
		}
	}
	if len(t.ports) > 0 {
		conn |= connFilterPort
	}
	if len(t.netns) > 0 {
		conn |= connFilterNetNS
	}
	t.settings.ProcFilters = proc
	t.settings.ConnFilters = conn
	t.settings.Gen++
	if t.settings.Gen == 0 {
		t.settings.Gen = 1
	}
	if err := t.objs.SettingsMap.Put(uint32(0), &t.settings); err != nil {
		return fmt.Errorf("capture: write settings: %w", err)
	}
	return nil
}

// bumpGen makes every thread recompute its verdict (and Go offsets).
func (t *Tracer) bumpGen() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.syncMapsLocked()
}
