//go:build linux && amd64

package capture

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

const childEnv = "DEEPTRACE_CAPTURE_OPEN_CHILD"

// openAsChild runs in a copy of the test binary started without
// privileges: it reports what Open said and exits non-zero on failure, as
// the agent does.
func openAsChild() {
	tr, err := Open(Config{All: true})
	if err != nil {
		fmt.Println(err)
		if errors.Is(err, ErrUnavailable) {
			os.Exit(3)
		}
		os.Exit(1)
	}
	tr.Close()
	fmt.Println("opened")
	os.Exit(0)
}

// TestUnprivilegedOpen: without CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN, Open
// fails with ErrUnavailable and says which privilege is missing.
func TestUnprivilegedOpen(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start an unprivileged child")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "capture-unpriv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755) // the child runs as nobody
	bin := filepath.Join(dir, "capture.test")
	if err := copyFile(exe, bin); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("unprivileged Open: exit %v, output %q; want exit 3 (ErrUnavailable)", err, out)
	}
	for _, want := range []string{"eBPF capture unavailable", "CAP_BPF", "CAP_PERFMON"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("error %q does not mention %q", out, want)
		}
	}
	t.Logf("unprivileged Open: %s", strings.TrimSpace(string(out)))
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
