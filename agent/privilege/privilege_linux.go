//go:build linux

package privilege

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"kernel.org/pub/linux/libs/security/libcap/cap"
)

// Needs says what the agent still does after its programs are attached;
// Keep turns it into capabilities.
type Needs struct {
	// LateUprobes: uprobes are attached to processes found later (capture
	// with GoCreation or GoScheduling). The agent command does not do
	// that; `deeptrace eval` recording does. The program loads of
	// cilium/ebpf's feature probes need CAP_BPF and CAP_PERFMON, and
	// perf_event_open of a uprobe PMU event needs CAP_SYS_ADMIN as well:
	// measured on Linux 6.18, where it fails with EACCES under CAP_BPF and
	// CAP_PERFMON alone (TestDropKeepsCapture/uprobes).
	LateUprobes bool
	// MapUpdatesNeedBPF: this kernel checks CAP_BPF on every bpf() call
	// while unprivileged BPF is disabled, map updates and lookups through
	// fds already open included (before Linux 6.5). From 6.5 on only
	// loading programs and creating maps are checked.
	MapUpdatesNeedBPF bool
}

// Keep lists the capabilities that n needs. Always kept: CAP_SYS_PTRACE
// and CAP_DAC_READ_SEARCH, since the agent reads /proc/<pid>/exe and the
// executables of traced processes that may belong to other users (Go
// runtime offsets for goroutine tracking, on every traced exec).
func (n Needs) Keep() []cap.Value {
	keep := []cap.Value{cap.SYS_PTRACE, cap.DAC_READ_SEARCH}
	hasBPF := cap.MaxBits() > cap.BPF
	switch {
	case n.LateUprobes && hasBPF:
		keep = append(keep, cap.BPF, cap.PERFMON, cap.SYS_ADMIN)
	case n.LateUprobes:
		keep = append(keep, cap.SYS_ADMIN)
	case n.MapUpdatesNeedBPF && hasBPF:
		keep = append(keep, cap.BPF)
	case n.MapUpdatesNeedBPF:
		keep = append(keep, cap.SYS_ADMIN)
	}
	return keep
}

// KernelNeeds fills Needs.MapUpdatesNeedBPF from the running kernel's
// release and kernel.unprivileged_bpf_disabled.
func KernelNeeds(lateUprobes bool) Needs {
	n := Needs{LateUprobes: lateUprobes}
	if b, err := os.ReadFile("/proc/sys/kernel/unprivileged_bpf_disabled"); err == nil && strings.TrimSpace(string(b)) == "0" {
		return n
	}
	major, minor, ok := kernelVersion()
	n.MapUpdatesNeedBPF = !ok || major < 6 || (major == 6 && minor < 5)
	return n
}

func kernelVersion() (major, minor int, ok bool) {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return 0, 0, false
	}
	parts := strings.SplitN(strings.TrimSpace(string(b)), ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	return major, minor, err1 == nil && err2 == nil
}

// Result is what Drop changed.
type Result struct {
	// Before and After are the process's capability sets as
	// /proc/self/status shows them.
	Before, After Status
	// Kept names the capabilities left (those of keep the process had).
	Kept []string
}

// Drop reduces the capabilities of every thread to those of keep that the
// process has: permitted and effective to keep, inheritable and ambient
// emptied, the bounding set cut to keep (so no exec can get the others
// back), and no_new_privs set (no setuid or file capabilities on exec
// either). With as, every thread also takes that user and group (all of
// uid, euid, suid and fsuid; supplementary groups emptied) and keeps the
// capabilities of keep: uid 0 without capabilities would still own root's
// files. It cannot be undone.
func Drop(as *Identity, keep ...cap.Value) (Result, error) {
	var r Result
	var err error
	if r.Before, err = ReadStatus(); err != nil {
		return r, err
	}
	cur := cap.GetProc()
	want := cap.NewSet()
	for _, v := range keep {
		if has, _ := cur.GetFlag(cap.Permitted, v); has {
			if err := want.SetFlag(cap.Permitted, true, v); err != nil {
				return r, fmt.Errorf("privilege: %s: %w", v, err)
			}
			if err := want.SetFlag(cap.Effective, true, v); err != nil {
				return r, fmt.Errorf("privilege: %s: %w", v, err)
			}
			r.Kept = append(r.Kept, v.String())
		}
	}
	if _, err := cap.Prctlw(prSetNoNewPrivs, 1, 0, 0, 0); err != nil {
		return r, fmt.Errorf("privilege: set no_new_privs: %w", err)
	}
	if err := cap.ResetAmbient(); err != nil {
		return r, fmt.Errorf("privilege: clear ambient capabilities: %w", err)
	}
	if as != nil {
		// libcap keeps the permitted set across the change (keepcaps)
		// and empties the effective set.
		if err := cap.SetGroups(as.GID); err != nil {
			return r, fmt.Errorf("privilege: set group %d: %w", as.GID, err)
		}
		if err := cap.SetUID(as.UID); err != nil {
			return r, fmt.Errorf("privilege: set user %s (%d): %w", as.Name, as.UID, err)
		}
		// What follows needs CAP_SETPCAP effective again.
		p := cap.GetProc()
		if err := p.Fill(cap.Effective, cap.Permitted); err != nil {
			return r, fmt.Errorf("privilege: raise permitted capabilities: %w", err)
		}
		if err := p.SetProc(); err != nil {
			return r, fmt.Errorf("privilege: raise permitted capabilities: %w", err)
		}
	}
	// The bounding set first: dropping from it needs CAP_SETPCAP, which
	// goes with the rest below.
	var drop []cap.Value
	for v := cap.Value(0); v < cap.MaxBits(); v++ {
		if has, _ := want.GetFlag(cap.Permitted, v); !has {
			drop = append(drop, v)
		}
	}
	if err := cap.DropBound(drop...); err != nil {
		return r, fmt.Errorf("privilege: drop from the bounding set: %w", err)
	}
	if err := want.SetProc(); err != nil {
		return r, fmt.Errorf("privilege: set capabilities %q: %w", want, err)
	}
	if r.After, err = ReadStatus(); err != nil {
		return r, err
	}
	return r, nil
}

// prSetNoNewPrivs is PR_SET_NO_NEW_PRIVS.
const prSetNoNewPrivs = 38

// Status is the capability part of /proc/self/status.
type Status struct {
	Inh, Prm, Eff, Bnd, Amb uint64
	NoNewPrivs              bool
	// UIDs and GIDs are the real, effective, saved and filesystem ids.
	UIDs, GIDs [4]int
}

// Names lists the capabilities of a mask, as "cap_bpf,cap_perfmon".
func Names(mask uint64) string {
	var out []string
	for v := cap.Value(0); v < cap.MaxBits() && v < 64; v++ {
		if mask&(1<<v) != 0 {
			out = append(out, v.String())
		}
	}
	return strings.Join(out, ",")
}

// ReadStatus reads the calling process's capability sets from
// /proc/self/status (what any other process sees of it in
// /proc/<pid>/status).
func ReadStatus() (Status, error) { return ReadStatusOf("self") }

// ReadStatusOf reads those of /proc/<pid>/status ("self" for this one).
func ReadStatusOf(pid string) (Status, error) {
	var s Status
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return s, fmt.Errorf("privilege: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		var dst *uint64
		switch k {
		case "CapInh":
			dst = &s.Inh
		case "CapPrm":
			dst = &s.Prm
		case "CapEff":
			dst = &s.Eff
		case "CapBnd":
			dst = &s.Bnd
		case "CapAmb":
			dst = &s.Amb
		case "NoNewPrivs":
			s.NoNewPrivs = v == "1"
			continue
		case "Uid", "Gid":
			ids := &s.UIDs
			if k == "Gid" {
				ids = &s.GIDs
			}
			for i, f := range strings.Fields(v) {
				if i < len(ids) {
					ids[i], _ = strconv.Atoi(f)
				}
			}
			continue
		default:
			continue
		}
		n, err := strconv.ParseUint(v, 16, 64)
		if err != nil {
			return s, fmt.Errorf("privilege: /proc/%s/status %s %q: %w", pid, k, v, err)
		}
		*dst = n
	}
	return s, sc.Err()
}

// DropForAgent drops what the agent does not need once its programs are
// attached on this kernel (KernelNeeds, Needs.Keep), and becomes as when
// it is not nil.
func DropForAgent(lateUprobes bool, as *Identity) (Result, error) {
	return Drop(as, KernelNeeds(lateUprobes).Keep()...)
}
