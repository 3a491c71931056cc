// Package capture loads DeepTrace's eBPF programs (bpf/), attaches them, and
// turns what they report into event.Event and event.GoEvent values: one per
// read, write, connect, accept and close of a TCP socket by a traced process,
// with payload, 4-tuple, role, TCP sequence position, network namespace,
// thread and, for Go programs, goroutine.
//
// A Tracer owns the kernel objects. Open loads and attaches; Run reads the
// ring buffer until its context ends, puts each connection's data events
// back in stream order per direction, and sends them on; Close detaches.
// Which processes and connections are traced is held in BPF maps and can
// change while running (TracePID, SetComms, SetCgroups, SetPorts,
// SetNetNS). The agent's own process is never traced.
//
// Where eBPF cannot load, Open returns an error that wraps ErrUnavailable and
// names the missing privilege.
package capture
