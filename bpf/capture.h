// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// Records and settings shared by the capture programs and user space
// (agent/capture decodes them through the bpf2go-generated Go types).

#ifndef DEEPTRACE_CAPTURE_H
#define DEEPTRACE_CAPTURE_H

#define MAX_CHUNK 16384 // hard cap of payload bytes per event

enum record_type {
	REC_DATA = 1, // struct data_event, then len payload bytes
	REC_GO = 2,   // struct go_event
	REC_EXEC = 3, // struct exec_event: a traced process replaced its image
};

enum kind {
	KIND_DATA = 1,
	KIND_CONNECT = 2,
	KIND_ACCEPT = 3,
	KIND_CLOSE = 4,
};

enum direction {
	DIR_EGRESS = 1,
	DIR_INGRESS = 2,
};

enum role {
	ROLE_UNKNOWN = 0,
	ROLE_CLIENT = 1,
	ROLE_SERVER = 2,
};

enum event_flags {
	FLAG_TRUNCATED = 1, // the call moved more than max_call_bytes
	FLAG_FAULT = 2,     // a user page could not be read: payload has zeros
	FLAG_NO_ENTER = 4,  // entry not seen (attached mid-call): enter_ns = exit_ns
	FLAG_SEQ_GUESS = 8, // another send on the socket overlapped this one: seq may be off
};

// One socket call, or one chunk of its payload.
struct data_event {
	__u8 type; // REC_DATA
	__u8 kind;
	__u8 dir;
	__u8 role;
	__u8 family; // AF_INET or AF_INET6
	__u8 flags;
	__u16 lport; // host order
	__u16 rport; // host order
	__u16 pad;
	__u32 pid;
	__u32 tid;
	__s32 fd;
	__u32 netns;
	__u32 seq; // TCP sequence of the call's first byte
	__u64 enter_ns;
	__u64 exit_ns;
	__u64 sock_id; // socket inode number
	__u64 cgroup;
	__u64 goid;
	__s64 size;   // the call's return value
	__u32 offset; // position of this chunk's payload in the call
	__u32 len;    // payload bytes that follow the header
	__u8 laddr[16];
	__u8 raddr[16];
	char comm[16];
	__u64 parent_goid; // the goroutine that created goid (Go >= 1.21)
};

enum go_kind {
	GO_CREATE = 1,
	GO_RUNNING = 2,
};

#define GO_STATUS_RUNNING 2 // runtime._Grunning

struct go_event {
	__u8 type; // REC_GO
	__u8 kind;
	__u16 pad;
	__u32 pid;
	__u32 tid;
	__u32 pad2;
	__u64 ns;
	__u64 goid;
	__u64 parent_goid;
};

struct exec_event {
	__u8 type; // REC_EXEC
	__u8 pad[3];
	__u32 pid;
};

enum filter_value {
	FILTER_ALLOW = 1,
	FILTER_DENY = 2,
};

enum proc_filter_bits {
	PROC_FILTER_PID = 1,
	PROC_FILTER_COMM = 2,
	PROC_FILTER_CGROUP = 4,
};

enum conn_filter_bits {
	CONN_FILTER_PORT = 1,
	CONN_FILTER_NETNS = 2,
};

struct settings {
	__u32 proc_filters; // proc_filter_bits in use; 0 traces every process
	__u32 conn_filters; // conn_filter_bits in use
	__u32 gen;          // bumped on every change: threads recompute their verdict
	__u32 pad;
};

struct comm_key {
	char comm[16];
};

struct go_info {
	__u16 goid_off;        // runtime.g.goid
	__u16 parent_goid_off; // runtime.g.parentGoid, 0 when absent
	__u32 pad;
};

enum counter {
	CNT_EVENTS = 0,        // records written
	CNT_DROPPED = 1,       // records lost: ring buffer full
	CNT_DROPPED_BYTES = 2, // payload bytes in the lost records
	CNT_TRUNCATED_CALLS = 3,
	CNT_FAULTS = 4,        // payload reads that faulted
	CNT_GO_EVENTS = 5,
	CNT_SEND_OVERLAPS = 6, // sends whose sequence is a guess (FLAG_SEQ_GUESS)
	CNT_MAX = 8,
};

#endif
