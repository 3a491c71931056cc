//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// Empty programs on the three ways to hook system calls. Benchmarks attach
// one pair at a time to measure the floor: what the hook costs a syscall
// before any program logic runs.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("tracepoint/syscalls/sys_enter_write")
int floor_tp_enter(void *ctx) { return 0; }

SEC("tracepoint/syscalls/sys_exit_write")
int floor_tp_exit(void *ctx) { return 0; }

SEC("raw_tracepoint/sys_enter")
int floor_raw_enter(void *ctx) { return 0; }

SEC("raw_tracepoint/sys_exit")
int floor_raw_exit(void *ctx) { return 0; }

SEC("tp_btf/sys_enter")
int floor_btf_enter(void *ctx) { return 0; }

SEC("tp_btf/sys_exit")
int floor_btf_exit(void *ctx) { return 0; }

// Capture also hooks TCP's send path, under the socket lock.
SEC("tp_btf/tcp_sendmsg_locked")
int floor_btf_sendmsg(void *ctx) { return 0; }

char LICENSE[] SEC("license") = "Dual MIT/GPL";
