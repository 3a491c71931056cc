package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/spf13/pflag"

	"github.com/deeptrace/deeptrace/agent/privilege"
)

// agentPrivilegeFlags say whether the agent drops its capabilities once
// capture is attached, and whose user it becomes (agent/privilege,
// docs/reliability.md). They live beside agentFlags so the agent command
// needs only hook lines.
type agentPrivilegeFlags struct {
	drop bool
	user string
	as   *privilege.Identity // user, resolved at start
}

var agentPrivilege agentPrivilegeFlags

func registerAgentPrivilegeFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&agentPrivilege.drop, "drop-privileges", true, "once capture is attached, keep only CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH (and CAP_BPF where the kernel checks it on map updates), empty the bounding set of the rest and set no_new_privs")
	fs.StringVar(&agentPrivilege.user, "user", "", "with the drop, also become this user (name or uid) and its group, keeping those capabilities: uid 0 without capabilities still owns root's files. The spool folder and the --config-state file are given to it first. Empty: stay uid 0")
}

// resolveAgentUser looks --user up before anything is loaded, so that a
// user that does not exist stops the agent at once.
func resolveAgentUser(replay bool) error {
	if agentPrivilege.user == "" {
		return nil
	}
	if !agentPrivilege.drop {
		return errors.New("--user needs --drop-privileges")
	}
	if replay {
		return errors.New("--user applies once capture is attached; --replay attaches none (run the replay as that user instead)")
	}
	id, err := privilege.LookupIdentity(agentPrivilege.user)
	if err != nil {
		return fmt.Errorf("--user: %w", err)
	}
	agentPrivilege.as = &id
	return nil
}

// dropAgentPrivileges runs once the programs are loaded and attached and
// the ops endpoint listens. After it the agent still updates its filter
// maps and reads the ring buffer through the fds it holds, and reads the
// executables of processes it starts tracing; the agent attaches no
// uprobes later. A failure to drop capabilities is logged, not fatal:
// tracing goes on with the privileges it had. A failure to become --user
// is fatal: it was asked for.
//
// With --user, what the agent writes later is given to that user first:
// the spool folder (spool, empty for none) and the configuration state
// file (state, empty for none; created empty if missing).
func dropAgentPrivileges(log *slog.Logger, spool, state string) error {
	if !agentPrivilege.drop {
		return nil
	}
	as := agentPrivilege.as
	if as != nil {
		if err := giveTo(as, spool, state); err != nil {
			return fmt.Errorf("--user %s: %w", as.Name, err)
		}
	}
	r, err := privilege.DropForAgent(false, as)
	switch {
	case err != nil && as != nil:
		return fmt.Errorf("--user %s: %w", as.Name, err)
	case err != nil:
		log.Warn("capabilities not dropped; the agent keeps those it started with (--drop-privileges=false silences this)", "err", err)
		return nil
	}
	log.Info("privileges dropped", "kept", r.Kept, "cap_eff_before", fmt.Sprintf("%x", r.Before.Eff),
		"cap_eff", fmt.Sprintf("%x", r.After.Eff), "cap_bnd", fmt.Sprintf("%x", r.After.Bnd), "no_new_privs", r.After.NoNewPrivs,
		"uid", r.After.UIDs[1], "gid", r.After.GIDs[1])
	return nil
}

// giveTo makes the spool folder (and everything in it) and the state file
// as's.
func giveTo(as *privilege.Identity, spool, state string) error {
	if spool != "" {
		if err := os.MkdirAll(spool, 0o700); err != nil {
			return err
		}
		// The folder itself, when --spool-dir names a link to it.
		real, err := filepath.EvalSymlinks(spool)
		if err != nil {
			return err
		}
		err = filepath.WalkDir(real, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, as.UID, as.GID)
		})
		if err != nil {
			return fmt.Errorf("give the spool folder: %w", err)
		}
	}
	if state != "" {
		if err := os.MkdirAll(filepath.Dir(state), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(state, os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		f.Close()
		if err := os.Chown(state, as.UID, as.GID); err != nil {
			return fmt.Errorf("give the configuration state file: %w", err)
		}
	}
	return nil
}
