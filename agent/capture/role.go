package capture

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/deeptrace/deeptrace/agent/event"
)

// roles completes the role of connections whose start capture did not see
// (they predate the agent). The kernel side knows the role of sockets that
// came from connect() or accept(); for the others, the local port decides:
// a port the namespace listens on makes this end the server, a port in the
// ephemeral range the client; anything else stays unknown.
type roles struct {
	known   map[event.ConnKey]event.Role
	listen  map[uint32]*listenSet // per network namespace
	ephLo   uint16
	ephHi   uint16
	procDir string // "/proc", replaced in tests
	refresh uint64 // ns between two reads of one namespace's listeners
}

type listenSet struct {
	ports map[uint16]bool
	read  uint64 // monotonic ns
}

func newRoles(procDir string) *roles {
	r := &roles{
		known:   make(map[event.ConnKey]event.Role),
		listen:  make(map[uint32]*listenSet),
		ephLo:   32768,
		ephHi:   60999,
		procDir: procDir,
		refresh: 1e9,
	}
	if b, err := os.ReadFile(procDir + "/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			lo, err1 := strconv.ParseUint(f[0], 10, 16)
			hi, err2 := strconv.ParseUint(f[1], 10, 16)
			if err1 == nil && err2 == nil {
				r.ephLo, r.ephHi = uint16(lo), uint16(hi)
			}
		}
	}
	return r
}

// resolve fills e.Role when the kernel did not know it.
func (r *roles) resolve(e *event.Event, now uint64) {
	k := e.Key()
	switch e.Kind {
	case event.KindConnect, event.KindAccept:
		r.known[k] = e.Role
		return
	case event.KindClose:
		if e.Role == event.RoleUnknown {
			e.Role = r.known[k]
		}
		delete(r.known, k)
		return
	}
	if e.Role != event.RoleUnknown {
		return
	}
	if role, ok := r.known[k]; ok {
		e.Role = role
		return
	}
	role := r.infer(e, now)
	if len(r.known) > 1<<16 {
		clear(r.known) // bound: connections whose close we missed
	}
	r.known[k] = role
	e.Role = role
}

func (r *roles) infer(e *event.Event, now uint64) event.Role {
	ls := r.listen[e.NetNS]
	if ls == nil || (!ls.ports[e.Local.Port()] && now-ls.read > r.refresh) {
		ports, err := readListeners(fmt.Sprintf("%s/%d/net", r.procDir, e.PID))
		if err == nil {
			ls = &listenSet{ports: ports, read: now}
			r.listen[e.NetNS] = ls
		}
	}
	if ls != nil && ls.ports[e.Local.Port()] {
		return event.RoleServer
	}
	if p := e.Local.Port(); p >= r.ephLo && p <= r.ephHi {
		return event.RoleClient
	}
	return event.RoleUnknown
}

// readListeners returns the TCP ports in LISTEN state in a namespace's
// /proc/<pid>/net/tcp and tcp6.
func readListeners(netDir string) (map[uint16]bool, error) {
	ports := make(map[uint16]bool)
	var firstErr error
	for _, name := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(netDir + "/" + name)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		parseListeners(b, ports)
	}
	if len(ports) == 0 && firstErr != nil {
		return nil, firstErr
	}
	return ports, nil
}

// parseListeners reads lines like
// "0: 0100007F:1F90 00000000:0000 0A ..." (local address, remote, state).
func parseListeners(b []byte, ports map[uint16]bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Scan() // header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[3] != "0A" {
			continue
		}
		i := strings.LastIndexByte(f[1], ':')
		if i < 0 {
			continue
		}
		p, err := strconv.ParseUint(f[1][i+1:], 16, 16)
		if err == nil {
			ports[uint16(p)] = true
		}
	}
}
