package capture

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ErrUnavailable is wrapped by the errors of Open when eBPF cannot be used
// here: missing privileges, or a kernel that refuses the programs.
var ErrUnavailable = errors.New("eBPF capture unavailable")

// Linux capability numbers.
const (
	capSysAdmin = 21
	capPerfmon  = 38
	capBPF      = 39
)

// missingPrivileges names what the process lacks to load and attach the
// programs: CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN (which implies both
// on older kernels). Empty when nothing is missing or it cannot tell.
func missingPrivileges() []string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return nil
	}
	var eff uint64
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			eff, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return nil
			}
		}
	}
	has := func(c uint) bool { return eff&(1<<c) != 0 }
	if has(capSysAdmin) {
		return nil
	}
	var missing []string
	if !has(capBPF) {
		missing = append(missing, "CAP_BPF")
	}
	if !has(capPerfmon) {
		missing = append(missing, "CAP_PERFMON")
	}
	return missing
}

// unavailable wraps a load or attach failure with ErrUnavailable and the
// privileges that are missing, if any.
func unavailable(step string, err error) error {
	if m := missingPrivileges(); len(m) > 0 {
		return fmt.Errorf("%w: missing %s (or CAP_SYS_ADMIN): run as root or grant them; %s: %v",
			ErrUnavailable, strings.Join(m, " and "), step, err)
	}
	return fmt.Errorf("%w: %s: %v", ErrUnavailable, step, err)
}
