package capture

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/deeptrace/deeptrace/agent/event"
)

const procNetTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 20 4 30 10 -1
`

const procNetTCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 100 0 0 10 0
`

func TestRoleInference(t *testing.T) {
	proc := t.TempDir()
	os.MkdirAll(filepath.Join(proc, "42", "net"), 0o755)
	os.MkdirAll(filepath.Join(proc, "sys", "net", "ipv4"), 0o755)
	os.WriteFile(filepath.Join(proc, "42", "net", "tcp"), []byte(procNetTCP), 0o644)
	os.WriteFile(filepath.Join(proc, "42", "net", "tcp6"), []byte(procNetTCP6), 0o644)
	os.WriteFile(filepath.Join(proc, "sys", "net", "ipv4", "ip_local_port_range"), []byte("40000\t50000\n"), 0o644)
	r := newRoles(proc)
	ev := func(sock uint64, local string, role event.Role) *event.Event {
		return &event.Event{Kind: event.KindData, PID: 42, SockID: sock, NetNS: 1,
			Local: netip.MustParseAddrPort(local), Role: role}
	}
	cases := []struct {
		name string
		e    *event.Event
		want event.Role
	}{
		{"listening port 8080", ev(1, "127.0.0.1:8080", event.RoleUnknown), event.RoleServer},
		{"listening port 80 (tcp6)", ev(2, "10.0.0.1:80", event.RoleUnknown), event.RoleServer},
		{"ephemeral port", ev(3, "127.0.0.1:45000", event.RoleUnknown), event.RoleClient},
		{"neither", ev(4, "127.0.0.1:5000", event.RoleUnknown), event.RoleUnknown},
		{"kernel knew", ev(5, "127.0.0.1:8080", event.RoleClient), event.RoleClient},
	}
	for _, c := range cases {
		r.resolve(c.e, 0)
		if c.e.Role != c.want {
			t.Errorf("%s: role %v, want %v", c.name, c.e.Role, c.want)
		}
	}
	// Connect fixes the role of its socket; close forgets it.
	r.resolve(&event.Event{Kind: event.KindConnect, PID: 42, SockID: 9, Role: event.RoleClient}, 0)
	e := ev(9, "127.0.0.1:8080", event.RoleUnknown)
	r.resolve(e, 0)
	if e.Role != event.RoleClient {
		t.Errorf("after connect: %v", e.Role)
	}
	r.resolve(&event.Event{Kind: event.KindClose, PID: 42, SockID: 9}, 0)
	if _, ok := r.known[event.ConnKey{PID: 42, SockID: 9}]; ok {
		t.Error("close did not forget the connection")
	}
}
