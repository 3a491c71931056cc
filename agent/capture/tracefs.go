//go:build linux

package capture

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// TracefsPath is where tracefs is mounted when it is missing.
const TracefsPath = "/sys/kernel/tracing"

// EnsureTracefs mounts tracefs at TracefsPath unless it (or debugfs's
// tracing directory) is already there. Tracepoints attached by name and the
// fallback for uprobes need it; the capture programs themselves (tp_btf)
// do not.
func EnsureTracefs() error {
	for _, p := range []string{TracefsPath + "/events", "/sys/kernel/debug/tracing/events"} {
		if _, err := os.Stat(p); err == nil {
			return nil
		}
	}
	if err := unix.Mount("nodev", TracefsPath, "tracefs", 0, ""); err != nil {
		return fmt.Errorf("capture: mount tracefs at %s: %w", TracefsPath, err)
	}
	return nil
}
