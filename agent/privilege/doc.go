// Package privilege drops the agent's capabilities once its eBPF programs
// are loaded and attached, keeping only what the rest of its life needs
// (docs/reliability.md, "Agent privileges").
//
// Capabilities are per thread in Linux and the Go runtime moves goroutines
// between threads, so the change must reach every thread at once: the
// libcap "cap" package does that through "psx" (syscall.AllThreadsSyscall
// without cgo, libpsx's signal round with it).
package privilege
