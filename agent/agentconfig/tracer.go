package agentconfig

import (
	"fmt"
	"sync"
)

// Filterer is the part of capture.Tracer a configuration drives.
type Filterer interface {
	TracePID(pid int) error
	UntracePID(pid int) error
	SetComms(names ...string) error
	SetCgroups(ids ...uint64) error
	SetPorts(ports ...uint16) error
}

// TracerApplier applies the filters of configurations to a tracer, live:
// the process and port filters are replaced, pids that left the list are
// untraced. CgroupID resolves a cgroup path (capture.CgroupID).
type TracerApplier struct {
	Tracer   Filterer
	CgroupID func(path string) (uint64, error)

	mu   sync.Mutex
	pids map[int]bool
}

// Apply implements Applier. A configuration without filters leaves the
// tracer alone.
func (a *TracerApplier) Apply(c Config) error {
	f := c.Filters
	if f == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var cg []uint64
	for i, path := range f.Cgroups {
		if a.CgroupID == nil {
			return fmt.Errorf("filters.cgroups[%d]: cgroups are not supported here", i)
		}
		id, err := a.CgroupID(path)
		if err != nil {
			return fmt.Errorf("filters.cgroups[%d]: %w", i, err)
		}
		cg = append(cg, id)
	}
	ports := make([]uint16, len(f.Ports))
	for i, p := range f.Ports {
		ports[i] = uint16(p)
	}
	if err := a.Tracer.SetComms(f.Comms...); err != nil {
		return err
	}
	if err := a.Tracer.SetCgroups(cg...); err != nil {
		return err
	}
	if err := a.Tracer.SetPorts(ports...); err != nil {
		return err
	}
	want := map[int]bool{}
	for _, p := range f.PIDs {
		want[p] = true
		if !a.pids[p] {
			if err := a.Tracer.TracePID(p); err != nil {
				return fmt.Errorf("filters.pids: %w", err)
			}
		}
	}
	for p := range a.pids {
		if !want[p] {
			if err := a.Tracer.UntracePID(p); err != nil {
				return fmt.Errorf("filters.pids: %w", err)
			}
		}
	}
	a.pids = want
	return nil
}
