// Package bpf holds DeepTrace's eBPF programs: the C sources, the headers
// they build against, and the Go bindings and objects that bpf2go generated
// from them. The objects are committed, so building the agent needs no clang;
// `go generate ./bpf` rebuilds them.
package bpf

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -no-global-types -target amd64 -cflags "-O2 -g -Wall -Werror" Floor floor.bpf.c -- -I./headers
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target amd64 -cflags "-O2 -g -Wall -Werror" -type data_event -type settings -type go_info -type comm_key Capture capture.bpf.c -- -I./headers -I.
