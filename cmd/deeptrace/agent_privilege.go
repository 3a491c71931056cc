package main

import (
	"fmt"
	"log/slog"

	"github.com/spf13/pflag"

	"github.com/deeptrace/deeptrace/agent/privilege"
)

// agentPrivilegeFlags say whether the agent drops its capabilities once
// capture is attached (agent/privilege, docs/reliability.md). They live
// beside agentFlags so the agent command needs only hook lines.
type agentPrivilegeFlags struct {
	drop bool
}

var agentPrivilege agentPrivilegeFlags

func registerAgentPrivilegeFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&agentPrivilege.drop, "drop-privileges", true, "once capture is attached, keep only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (and CAP_BPF where the kernel checks it on map updates), empty the bounding set of the rest and set no_new_privs")
}

// dropAgentPrivileges runs once the programs are loaded and attached and
// the ops endpoint listens. After it the agent still updates its filter
// maps and reads the ring buffer through the fds it holds, and reads the
// executables of processes it starts tracing; the agent attaches no
// uprobes later. A failure is logged, not fatal: tracing goes on with the
// privileges it had.
func dropAgentPrivileges(log *slog.Logger) {
	if !agentPrivilege.drop {
		return
	}
	r, err := privilege.DropForAgent(false)
	if err != nil {
		log.Warn("capabilities not dropped; the agent keeps those it started with (--drop-privileges=false silences this)", "err", err)
		return
	}
	log.Info("privileges dropped", "kept", r.Kept, "cap_eff_before", fmt.Sprintf("%x", r.Before.Eff),
		"cap_eff", fmt.Sprintf("%x", r.After.Eff), "cap_bnd", fmt.Sprintf("%x", r.After.Bnd), "no_new_privs", r.After.NoNewPrivs)
}
