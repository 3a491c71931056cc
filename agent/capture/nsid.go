//go:build linux

package capture

import (
	"fmt"
	"os"
	"syscall"
)

// CgroupID returns the id of a cgroup v2 directory (its inode number), as
// the kernel reports it to BPF, e.g. CgroupID("/sys/fs/cgroup/unified/x").
func CgroupID(path string) (uint64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("capture: cgroup %s: %w", path, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || !fi.IsDir() {
		return 0, fmt.Errorf("capture: cgroup %s: not a cgroup directory", path)
	}
	return st.Ino, nil
}

// NetNSInode returns the inode of a network namespace file, e.g.
// /proc/<pid>/ns/net or /run/netns/<name>: the id capture reports in
// event.Event.NetNS and SetNetNS takes.
func NetNSInode(path string) (uint32, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, fmt.Errorf("capture: netns %s: %w", path, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("capture: netns %s: no inode", path)
	}
	return uint32(st.Ino), nil
}
