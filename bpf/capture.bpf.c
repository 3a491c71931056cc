//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// Socket capture: every read and write of the traced processes on TCP
// sockets, with payload, tuple, TCP sequence position, thread and goroutine.
//
// Hooks: tp_btf/sys_enter and tp_btf/sys_exit (one program each, a switch on
// the syscall number). Of the three ways to hook system calls they cost the
// least here (see docs/capture.md), and they hand us pt_regs, so the exit
// program reads the syscall's arguments from the registers instead of a map
// written at entry. The send sequence is write_seq at entry, checked at exit;
// tp_btf/tcp_sendmsg_locked, attached once threads of a traced process
// were seen sending on one socket at once, gives it exact in that case too.
// tp_btf/sched_process_exec forgets what a new program image invalidates.
// Optional uprobes on the Go runtime report goroutine creation and
// scheduling.
//
// Hot path for an untraced process: syscall-number test, one task-local
// storage lookup (its cached verdict), return.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#include "capture.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define SOCK_STREAM 1
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define EAGAIN 11
#define EINPROGRESS 115
#define MSG_PEEK 0x2
#define MSG_TRUNC 0x20
#define TS_COMPAT 0x0002

// x86_64 system call numbers.
#define NR_read 0
#define NR_write 1
#define NR_close 3
#define NR_readv 19
#define NR_writev 20
#define NR_sendfile 40
#define NR_connect 42
#define NR_accept 43
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47
#define NR_accept4 288
#define NR_recvmmsg 299
#define NR_sendmmsg 307

#define LOW_NR_MASK                                                            \
	((1ULL << NR_read) | (1ULL << NR_write) | (1ULL << NR_close) |          \
	 (1ULL << NR_readv) | (1ULL << NR_writev) | (1ULL << NR_sendfile) |    \
	 (1ULL << NR_connect) | (1ULL << NR_accept) | (1ULL << NR_sendto) |    \
	 (1ULL << NR_recvfrom) | (1ULL << NR_sendmsg) | (1ULL << NR_recvmsg))

#define MAX_MMSG 8 // messages of one sendmmsg/recvmmsg that are captured
#define MAX_CGROUP_DEPTH 16
#define NO_SYSCALL 0xffffffff

// Load-time configuration, set by the loader before the programs load.
volatile const __u32 chunk_size = 4096;       // payload bytes per event, <= MAX_CHUNK
volatile const __u32 max_call_bytes = 65536;  // payload bytes captured per call
volatile const __u64 wakeup_bytes = 1 << 20;  // wake the reader when this much is pending
volatile const __u64 wakeup_check = 65536;    // bytes a CPU writes between two looks at the backlog

// kfunc: view a kernel pointer as a BTF type, for direct (read-only) loads
// instead of one bpf_probe_read_kernel call per field.
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;
// kfunc (Linux 6.16): copy user memory into a dynptr, here straight into a
// ring buffer record.
extern int bpf_probe_read_user_dynptr(struct bpf_dynptr *dptr, __u32 off, __u32 size,
				      const void *unsafe_ptr__ign) __ksym;
#define cast(type, ptr) ((type *)bpf_rdonly_cast((ptr), bpf_core_type_id_kernel(type)))

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 << 20); // resized by the loader
} events SEC(".maps");

// Runtime settings, one element, written by user space.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} settings_map SEC(".maps");

// Process selection. pid_filter also holds the explicit denials (the agent).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} pid_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct comm_key);
	__type(value, __u8);
} comm_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} cgroup_filter SEC(".maps");

// Connection selection: a port (local or remote) or a network namespace.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
} port_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u8);
} netns_filter SEC(".maps");

// Go processes whose runtime layout user space has read: tgid -> offsets.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct go_info);
} go_procs SEC(".maps");

// Per-thread state: the cached verdict and the syscall in flight.
struct task_state {
	__u32 gen;      // settings.gen the verdict was computed for
	__u8 traced;
	__u8 seq_ok;    // send_seq is set for the syscall in flight
	__u16 goid_off; // offset of goid in runtime.g, 0 when not Go
	__u32 nr;       // syscall entered, NO_SYSCALL when none
	__u16 pgoid_off; // offset of parentGoid in runtime.g, 0 when unknown
	__u8 seq0_ok;    // send_seq0, sk and ino are set for the send in flight
	__u8 no_sock;    // the send in flight is on no TCP socket
	__u64 enter_ns;
	__u64 cgroup;
	__u32 send_seq;  // write_seq when TCP began queueing this call's bytes
	__u32 send_seq0; // write_seq when the send entered
	__u64 sk;        // the send's socket, found at entry (the call holds it)
	__u64 ino;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_state);
} tstate SEC(".maps");

// Payloads from this size on are read straight into a ring buffer record
// reserved at its exact size; below it the copy through the scratch event
// costs less than the dynptr calls (~40 ns).
#define DIRECT_MIN 2048

#define GO_SPAN 256 // goid and parentGoid this close in runtime.g are read at once

// A source of payload bytes: one buffer, or an iovec array.
struct gather {
	__u64 iov;       // user address of struct iovec[], 0 for a single buffer
	__u32 iovcnt;
	__u32 idx;       // next iovec to load
	__u64 seg_base;  // current segment
	__u64 seg_left;
	__u64 remaining; // payload bytes still to capture
	__u32 offset;    // position in the call of the pending event's first byte
	__u32 filled;    // payload bytes in the pending event
	__u32 want;      // payload bytes per event
	__u32 faults;
};

// The event under construction, one per CPU (programs on syscall
// tracepoints run with preemption disabled). An ARRAY indexed by CPU rather
// than a PERCPU_ARRAY because the value exceeds the 32 KiB per-CPU limit:
// room for two chunks lets gathering from iovecs write at a variable offset
// that the verifier can bound. The gather state lives here too, not on the
// stack: the verifier tracks stack scalars precisely through bpf_loop
// callbacks and gives up ("sequence of 8193 jumps is too complex", EFAULT),
// while map values are unknown on each load.
struct scratch {
	struct gather g;
	__u64 unchecked; // bytes this CPU wrote since it last looked at the backlog
	__u64 over;      // the backlog was over wakeup_bytes when it last looked
	__u8 gobuf[GO_SPAN];
	struct data_event hdr;
	__u8 buf[2 * MAX_CHUNK];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); // set to the number of possible CPUs by the loader
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 idx, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &idx);
	if (c)
		*c += n;
}

static __always_inline bool is_ours(long nr)
{
	if (nr < 64)
		return (LOW_NR_MASK >> nr) & 1;
	return nr == NR_accept4 || nr == NR_recvmmsg || nr == NR_sendmmsg;
}

static __always_inline bool is_send(long nr)
{
	return nr == NR_write || nr == NR_sendto || nr == NR_writev || nr == NR_sendmsg ||
	       nr == NR_sendmmsg || nr == NR_sendfile;
}

// verdict decides whether the current process is traced: never when denied,
// always when no process filter is set, else when any filter selects it.
static __always_inline bool verdict(struct task_struct *task, __u32 tgid,
				    struct settings *s)
{
	__u8 *v = bpf_map_lookup_elem(&pid_filter, &tgid);
	if (v && *v == FILTER_DENY)
		return false;
	if (!s->proc_filters)
		return true;
	if (v && (s->proc_filters & PROC_FILTER_PID))
		return true;
	if (s->proc_filters & PROC_FILTER_COMM) {
		struct comm_key k = {};
		bpf_probe_read_kernel_str(k.comm, sizeof(k.comm), task->group_leader->comm);
		if (bpf_map_lookup_elem(&comm_filter, &k))
			return true;
	}
	if (s->proc_filters & PROC_FILTER_CGROUP) {
		__u64 id = bpf_get_current_cgroup_id();
		if (bpf_map_lookup_elem(&cgroup_filter, &id))
			return true;
		for (int lvl = 1; lvl < MAX_CGROUP_DEPTH; lvl++) {
			id = bpf_get_current_ancestor_cgroup_id(lvl);
			if (!id)
				break;
			if (bpf_map_lookup_elem(&cgroup_filter, &id))
				return true;
		}
	}
	return false;
}

// state_of returns the current thread's state with a verdict that is up to
// date, or NULL when the thread is not traced.
static __always_inline struct task_state *state_of(struct task_struct *task)
{
	__u32 zero = 0;
	struct settings *s = bpf_map_lookup_elem(&settings_map, &zero);
	if (!s)
		return 0;
	struct task_state *st = bpf_task_storage_get(&tstate, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!st)
		return 0;
	// A thread moved to another cgroup must be judged again when cgroups
	// select: containers' processes are often moved after they start.
	if (st->gen != s->gen || st->gen == 0 ||
	    ((s->proc_filters & PROC_FILTER_CGROUP) && bpf_get_current_cgroup_id() != st->cgroup)) {
		__u32 tgid = task->tgid;
		st->gen = s->gen ? s->gen : 1;
		st->traced = !(task->thread_info.status & TS_COMPAT) && verdict(task, tgid, s);
		st->nr = NO_SYSCALL;
		st->goid_off = 0;
		st->pgoid_off = 0;
		st->cgroup = bpf_get_current_cgroup_id();
		if (st->traced) {
			struct go_info *g = bpf_map_lookup_elem(&go_procs, &tgid);
			if (g) {
				st->goid_off = g->goid_off;
				st->pgoid_off = g->parent_goid_off;
			}
		}
	}
	return st->traced ? st : 0;
}

// sock_of_fd walks task->files->fdt->fd[fd] to a TCP socket, or returns
// NULL: not a socket (S_IFSOCK in the inode), not TCP, not IPv4/IPv6.
static __always_inline struct sock *sock_of_fd(struct task_struct *task, long fd, __u64 *ino)
{
	if (fd < 0)
		return 0;
	struct fdtable *fdt = task->files->fdt;
	if (fd >= fdt->max_fds)
		return 0;
	struct file **fds = fdt->fd;
	struct file *fp = 0;
	if (bpf_probe_read_kernel(&fp, sizeof(fp), &fds[fd]) || !fp)
		return 0;
	struct file *f = cast(struct file, fp);
	struct inode *inode = f->f_inode;
	if (!inode || (inode->i_mode & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *so = cast(struct socket, f->private_data);
	struct sock *sk = so->sk;
	if (!sk)
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP || sk->sk_type != SOCK_STREAM)
		return 0;
	__u16 fam = sk->__sk_common.skc_family;
	if (fam != AF_INET && fam != AF_INET6)
		return 0;
	*ino = inode->i_ino;
	return sk;
}

// Before 6.13 (file_ref_t) struct file counted references in f_count.
struct file___old {
	atomic_long_t f_count;
} __attribute__((preserve_access_index));

// last_ref reports whether the descriptor holds the file's only reference:
// closing it ends the socket, unlike closing a dup() or a descriptor that a
// forked child shares.
static __always_inline bool last_ref(struct task_struct *task, long fd)
{
	struct fdtable *fdt = task->files->fdt;
	if (fd < 0 || fd >= fdt->max_fds)
		return false;
	struct file **fds = fdt->fd;
	struct file *fp = 0;
	if (bpf_probe_read_kernel(&fp, sizeof(fp), &fds[fd]) || !fp)
		return false;
	if (bpf_core_field_exists(struct file, f_ref)) {
		struct file *f = cast(struct file, fp);
		return f->f_ref.refcnt.counter == 0; // FILE_REF_ONEREF: biased by one
	}
	struct file___old *old = (void *)fp;
	return BPF_CORE_READ(old, f_count.counter) == 1;
}

// conn_selected applies the connection filters (port, network namespace).
static __always_inline bool conn_selected(struct settings *s, __u16 lport, __u16 rport, __u32 netns)
{
	if (s->conn_filters & CONN_FILTER_NETNS) {
		if (!bpf_map_lookup_elem(&netns_filter, &netns))
			return false;
	}
	if (s->conn_filters & CONN_FILTER_PORT) {
		if (!bpf_map_lookup_elem(&port_filter, &lport) &&
		    !bpf_map_lookup_elem(&port_filter, &rport))
			return false;
	}
	return true;
}

// fill_conn writes the connection part of the header and applies the
// connection filters.
static __always_inline bool fill_conn(struct data_event *e, struct sock *sk, __u64 ino)
{
	struct sock_common *skc = &sk->__sk_common;
	e->family = skc->skc_family;
	e->lport = skc->skc_num;
	e->rport = bpf_ntohs(skc->skc_dport);
	e->netns = skc->skc_net.net->ns.inum;
	e->sock_id = ino;
	if (e->family == AF_INET) {
		__builtin_memset(e->laddr, 0, 16);
		__builtin_memset(e->raddr, 0, 16);
		*(__u32 *)e->laddr = skc->skc_rcv_saddr;
		*(__u32 *)e->raddr = skc->skc_daddr;
	} else {
		*(struct in6_addr *)e->laddr = skc->skc_v6_rcv_saddr;
		*(struct in6_addr *)e->raddr = skc->skc_v6_daddr;
	}
	__u32 zero = 0;
	struct settings *s = bpf_map_lookup_elem(&settings_map, &zero);
	if (!s)
		return false;
	if (s->conn_filters && !conn_selected(s, e->lport, e->rport, e->netns))
		return false;
	// The role of data events is left to user space: it learns it from
	// the connect and accept events (a map lookup here cost ~40 ns a call).
	e->role = ROLE_UNKNOWN;
	return true;
}

static __always_inline struct scratch *scratch_buf(void)
{
	__u32 cpu = bpf_get_smp_processor_id();
	return bpf_map_lookup_elem(&scratch, &cpu);
}

// fill_task writes who made the call.
static __always_inline void fill_task(struct scratch *sc, struct task_struct *task,
				      struct task_state *st, struct pt_regs *regs)
{
	struct data_event *e = &sc->hdr;
	e->pid = task->tgid;
	e->tid = task->pid;
	e->cgroup = st->cgroup;
	__builtin_memcpy(e->comm, task->group_leader->comm, sizeof(e->comm));
	e->goid = 0;
	e->parent_goid = 0;
	if (st->goid_off) {
		// Go's syscall wrappers run with the current g in R14 (the
		// register ABI), and the kernel saved R14 in pt_regs. The g also
		// names its creator: parent -> child without a uprobe on
		// goroutine creation.
		__u64 g = regs->r14;
		__u32 span = st->pgoid_off - st->goid_off; // wraps when parentGoid comes first
		if (g && st->pgoid_off && span <= GO_SPAN - 8) {
			// One read for both: each bpf_probe_read_user costs
			// ~100 ns here, whatever its size.
			if (!bpf_probe_read_user(sc->gobuf, span + 8, (void *)(g + st->goid_off))) {
				e->goid = *(__u64 *)sc->gobuf;
				e->parent_goid = *(__u64 *)(sc->gobuf + span);
			}
		} else if (g) {
			bpf_probe_read_user(&e->goid, sizeof(e->goid), (void *)(g + st->goid_off));
			if (st->pgoid_off)
				bpf_probe_read_user(&e->parent_goid, sizeof(e->parent_goid), (void *)(g + st->pgoid_off));
		}
	}
}

// rb_flags: no wakeup per record (a wakeup costs microseconds); the reader
// polls. Only the record that takes the backlog across wakeup_bytes wakes
// it, once, so a burst is not left waiting for the next poll. For the rare
// records (exec, goroutines).
static __always_inline __u64 rb_flags(__u64 size)
{
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	if (avail < wakeup_bytes && avail + size >= wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

// data_rb_flags is rb_flags for data records: the backlog (a read of the
// consumer position, a cache line user space writes) is looked at once per
// wakeup_check bytes this CPU wrote, and the reader woken when it went
// over wakeup_bytes since this CPU last looked. Once: while the reader
// works through a backlog, more wakeups would only cost (microseconds each).
static __always_inline __u64 data_rb_flags(struct scratch *sc, __u64 size)
{
	sc->unchecked += size;
	if (sc->unchecked < wakeup_check)
		return BPF_RB_NO_WAKEUP;
	sc->unchecked = 0;
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) + size;
	bool was_over = sc->over;
	sc->over = avail >= wakeup_bytes;
	if (sc->over && !was_over)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void output(struct scratch *sc, __u32 len)
{
	len &= 2 * MAX_CHUNK - 1; // a bound the verifier sees; len <= MAX_CHUNK already
	sc->hdr.len = len;
	__u64 size = sizeof(sc->hdr) + len;
	if (bpf_ringbuf_output(&events, &sc->hdr, size, data_rb_flags(sc, size))) {
		count(CNT_DROPPED, 1);
		count(CNT_DROPPED_BYTES, len);
		return;
	}
	count(CNT_EVENTS, 1);
}

// output_direct outputs the header (its offset set by the caller) and n
// payload bytes from user memory at buf as one record reserved at its exact
// size, the payload read straight into it (no copy through the scratch
// event). It reports false, having written nothing, when the payload could
// not be read: the caller takes the scratch path, which zeroes what
// faulted.
static __always_inline bool output_direct(struct scratch *sc, __u64 buf, __u32 n)
{
	struct bpf_dynptr dp;
	__u32 size = sizeof(struct data_event) + n;
	if (bpf_ringbuf_reserve_dynptr(&events, size, 0, &dp)) {
		bpf_ringbuf_discard_dynptr(&dp, 0);
		count(CNT_DROPPED, 1);
		count(CNT_DROPPED_BYTES, n);
		return true;
	}
	struct data_event *h = bpf_dynptr_data(&dp, 0, sizeof(*h));
	if (!h || (n && bpf_probe_read_user_dynptr(&dp, sizeof(*h), n, (void *)buf))) {
		bpf_ringbuf_discard_dynptr(&dp, BPF_RB_NO_WAKEUP);
		return false;
	}
	sc->hdr.len = n;
	*h = sc->hdr;
	bpf_ringbuf_submit_dynptr(&dp, data_rb_flags(sc, size));
	count(CNT_EVENTS, 1);
	return true;
}

static __always_inline void flush(struct scratch *sc, struct gather *g)
{
	if (g->faults)
		sc->hdr.flags |= FLAG_FAULT;
	sc->hdr.offset = g->offset;
	output(sc, g->filled);
	g->offset += g->filled;
	g->filled = 0;
}

// gather_direct outputs the next event straight from user memory into the
// ring buffer when its whole payload lies in the current segment. A
// subprogram of its own: inlined, it cost gather_step the bounds the
// verifier had on the scratch offset.
static __noinline bool gather_direct(struct scratch *sc)
{
	if (!sc)
		return false;
	struct gather *g = &sc->g;
	__u64 whole = g->want < g->remaining ? g->want : g->remaining;
	if (whole < DIRECT_MIN || whole > g->seg_left)
		return false;
	sc->hdr.offset = g->offset;
	if (!output_direct(sc, g->seg_base, whole))
		return false;
	g->offset += whole;
	g->seg_base += whole;
	g->seg_left -= whole;
	g->remaining -= whole;
	return true;
}

// gather_step is one bpf_loop step: load the next iovec, or copy one piece
// of the current segment into the pending event, outputting it when full.
static long gather_step(__u32 i, void *unused)
{
	struct scratch *sc = scratch_buf();
	if (!sc)
		return 1;
	struct gather *g = &sc->g;
	if (g->remaining == 0) {
		if (g->filled)
			flush(sc, g);
		return 1;
	}
	if (g->seg_left == 0) {
		if (g->idx >= g->iovcnt) {
			if (g->filled)
				flush(sc, g);
			return 1;
		}
		struct iovec iov = {};
		if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(g->iov + g->idx * sizeof(iov)))) {
			g->faults++;
			if (g->filled)
				flush(sc, g);
			return 1;
		}
		g->idx++;
		g->seg_base = (__u64)iov.iov_base;
		g->seg_left = iov.iov_len;
		return 0;
	}
	if (g->filled == 0 && gather_direct(sc))
		return 0;
	__u64 n = g->want - g->filled;
	if (g->seg_left < n)
		n = g->seg_left;
	if (g->remaining < n)
		n = g->remaining;
	__u32 off = g->filled;
	if (off >= MAX_CHUNK || n > MAX_CHUNK)
		return 1;
	if (bpf_probe_read_user(&sc->buf[off], n, (void *)g->seg_base))
		g->faults++;
	g->filled += n;
	g->seg_base += n;
	g->seg_left -= n;
	g->remaining -= n;
	if (g->filled >= g->want || g->remaining == 0)
		flush(sc, g);
	return 0;
}

// emit_data outputs the events of one call (or one message of a
// sendmmsg/recvmmsg): the header is already in the scratch event.
static __noinline int emit_data(__u64 iov, __u32 iovcnt, __u64 buf, __u64 size)
{
	struct scratch *sc = scratch_buf();
	if (!sc)
		return 0;
	__u32 want = chunk_size;
	if (want > MAX_CHUNK)
		want = MAX_CHUNK;
	struct gather *g = &sc->g;
	g->iov = iov;
	g->iovcnt = iovcnt;
	g->idx = 0;
	g->seg_base = buf;
	g->seg_left = iov ? 0 : size;
	g->remaining = size;
	g->offset = 0;
	g->filled = 0;
	g->want = want;
	g->faults = 0;
	if (size > max_call_bytes) {
		g->remaining = max_call_bytes;
		sc->hdr.flags |= FLAG_TRUNCATED;
		count(CNT_TRUNCATED_CALLS, 1);
	}
	if (g->remaining == 0 || want == 0 || (!iov && !buf)) {
		sc->hdr.offset = 0;
		output(sc, 0);
		return 0;
	}
	if (!iov && g->remaining <= want) {
		// One buffer, one event: the common case, without the loop.
		__u32 n = g->remaining;
		sc->hdr.offset = 0;
		if (n >= DIRECT_MIN && output_direct(sc, buf, n))
			return 0;
		n &= 2 * MAX_CHUNK - 1; // a bound the verifier sees; n <= MAX_CHUNK already
		if (bpf_probe_read_user(sc->buf, n, (void *)buf)) {
			sc->hdr.flags |= FLAG_FAULT;
			count(CNT_FAULTS, 1);
		}
		sc->hdr.offset = 0;
		output(sc, n);
		return 0;
	}
	bpf_loop(1 << 20, gather_step, 0, 0);
	sc = scratch_buf();
	if (sc && sc->g.faults)
		count(CNT_FAULTS, sc->g.faults);
	return 0;
}

#define RCV_SHUTDOWN 1
#define TCP_ESTABLISHED 1

// tcp_seq is, at exit, the sequence just past the call's bytes: for a send
// it is only used when tcp_sendmsg_locked did not give the start. A read
// that reached the peer's FIN advanced copied_seq one past the data (the
// FIN takes a sequence number); the data's end is one before. The FIN was
// read once the peer shut down and copied_seq caught up with rcv_nxt, which
// counts it (shutdown(SHUT_RD) alone leaves the state ESTABLISHED).
static __always_inline __u32 tcp_seq(struct sock *sk, __u8 dir)
{
	struct tcp_sock *tp = cast(struct tcp_sock, sk);
	if (dir == DIR_EGRESS)
		return tp->write_seq;
	__u32 copied = tp->copied_seq;
	if ((sk->sk_shutdown & RCV_SHUTDOWN) && copied == tp->rcv_nxt &&
	    sk->__sk_common.skc_state != TCP_ESTABLISHED)
		copied -= 1;
	return copied;
}

// send_start is where a send's `moved` bytes start on the stream, given
// `end`, the socket's write_seq at exit. Exact when tcp_sendmsg_locked took
// it under the socket lock, or when write_seq moved by exactly `moved` since
// entry: no other send on the socket came in between. Otherwise another
// thread's send overlapped this one, its bytes on either side: the start is
// a guess, flagged, and user space attaches the hook.
static __always_inline __u32 send_start(struct data_event *e, struct task_state *st, long nr,
					__u32 end, __u32 moved)
{
	if (st->nr != nr)
		return end - moved; // entry not seen
	if (st->seq_ok)
		return st->send_seq;
	if (st->seq0_ok) {
		if (end - st->send_seq0 == moved)
			return st->send_seq0;
		e->flags |= FLAG_SEQ_GUESS;
		count(CNT_SEND_OVERLAPS, 1);
	}
	return end - moved;
}

// begin fills the header common to every event of a call on a TCP socket,
// or returns NULL when the fd is no traced TCP socket.
static __always_inline struct scratch *begin(struct task_struct *task, struct task_state *st,
					     struct pt_regs *regs, long nr, long fd, __u8 kind,
					     __u8 dir, struct sock **skp)
{
	__u64 ino = 0;
	struct sock *sk;
	if (st->nr == nr && st->seq0_ok) {
		// A send whose socket the entry found: the call holds a
		// reference to it until it returns.
		sk = cast(struct sock, (void *)st->sk);
		ino = st->ino;
	} else if (st->nr == nr && st->no_sock) {
		return 0;
	} else {
		sk = sock_of_fd(task, fd, &ino);
	}
	if (!sk)
		return 0;
	struct scratch *sc = scratch_buf();
	if (!sc)
		return 0;
	struct data_event *e = &sc->hdr;
	if (!fill_conn(e, sk, ino))
		return 0;
	e->type = REC_DATA;
	e->kind = kind;
	e->dir = dir;
	e->flags = 0;
	e->fd = fd;
	e->seq = 0;
	e->offset = 0;
	e->len = 0;
	fill_task(sc, task, st, regs);
	*skp = sk;
	return sc;
}

static __always_inline void set_times(struct data_event *e, struct task_state *st, long nr, __u64 now)
{
	e->exit_ns = now;
	if (st->nr == nr && st->enter_ns) {
		e->enter_ns = st->enter_ns;
	} else {
		e->enter_ns = now;
		e->flags |= FLAG_NO_ENTER;
	}
}

// on_data handles the exit of a call that moved `ret` bytes through one
// buffer or an iovec array.
static __always_inline void on_data(struct task_struct *task, struct task_state *st,
				    struct pt_regs *regs, long nr, long ret, long fd,
				    __u8 dir, __u64 iov, __u32 iovcnt, __u64 buf, __u64 now)
{
	struct sock *sk = 0;
	struct scratch *sc = begin(task, st, regs, nr, fd, KIND_DATA, dir, &sk);
	if (!sc)
		return;
	set_times(&sc->hdr, st, nr, now);
	sc->hdr.size = ret;
	__u32 moved = ret > 0 ? ret : 0;
	__u32 seq = tcp_seq(sk, dir);
	if (dir == DIR_EGRESS)
		seq = send_start(&sc->hdr, st, nr, seq, moved);
	else
		seq -= moved;
	sc->hdr.seq = seq;
	emit_data(iov, iovcnt, buf, ret > 0 ? ret : 0);
}

// on_mmsg handles sendmmsg/recvmmsg: `ret` messages, each with its own
// iovec and byte count; their bytes are consecutive on the stream.
static __always_inline void on_mmsg(struct task_struct *task, struct task_state *st,
				    struct pt_regs *regs, long nr, long ret, __u8 dir, __u64 now)
{
	if (ret <= 0)
		return;
	struct sock *sk = 0;
	struct scratch *sc = begin(task, st, regs, nr, regs->di, KIND_DATA, dir, &sk);
	if (!sc)
		return;
	struct mmsghdr *vec = (struct mmsghdr *)regs->si;
	__u32 n = ret > MAX_MMSG ? MAX_MMSG : ret;
	__u32 lens[MAX_MMSG] = {};
	__u64 total = 0;
	for (__u32 i = 0; i < MAX_MMSG; i++) {
		if (i >= n)
			break;
		bpf_probe_read_user(&lens[i], sizeof(lens[i]), &vec[i].msg_len);
		total += lens[i];
	}
	__u32 seq = tcp_seq(sk, dir);
	if (dir == DIR_EGRESS)
		seq = send_start(&sc->hdr, st, nr, seq, total);
	else
		seq -= total;
	for (__u32 i = 0; i < MAX_MMSG; i++) {
		if (i >= n)
			break;
		struct user_msghdr m = {};
		bpf_probe_read_user(&m, sizeof(m), &vec[i].msg_hdr);
		sc = scratch_buf();
		if (!sc)
			return;
		set_times(&sc->hdr, st, nr, now);
		sc->hdr.size = lens[i];
		sc->hdr.seq = seq;
		sc->hdr.flags &= ~(FLAG_TRUNCATED | FLAG_FAULT);
		emit_data((__u64)m.msg_iov, m.msg_iovlen, 0, lens[i]);
		seq += lens[i];
	}
}

// on_conn reports connect() or accept(): the connection's start and its role.
static __always_inline void on_conn(struct task_struct *task, struct task_state *st,
				    struct pt_regs *regs, long nr, long fd, __u8 kind, __u64 now)
{
	struct sock *sk = 0;
	struct scratch *sc = begin(task, st, regs, nr, fd, kind, 0, &sk);
	if (!sc)
		return;
	sc->hdr.role = kind == KIND_CONNECT ? ROLE_CLIENT : ROLE_SERVER;
	set_times(&sc->hdr, st, nr, now);
	struct tcp_sock *tp = cast(struct tcp_sock, sk);
	sc->hdr.seq = tp->write_seq;
	sc->hdr.size = 0;
	output(sc, 0);
}

// on_close reports close() of the last descriptor of a TCP socket; it runs
// at entry, while the descriptor still leads to the socket.
static __always_inline void on_close(struct task_struct *task, struct task_state *st,
				     struct pt_regs *regs, long fd, __u64 now)
{
	struct sock *sk = 0;
	struct scratch *sc = begin(task, st, regs, -1, fd, KIND_CLOSE, 0, &sk);
	if (!sc)
		return;
	if (sc->hdr.rport == 0)
		return; // never connected (a listener, a failed connect): no connection ends
	if (!last_ref(task, fd))
		return; // another descriptor (dup, fork) keeps the socket open
	sc->hdr.enter_ns = now;
	sc->hdr.exit_ns = now;
	sc->hdr.size = 0;
	output(sc, 0);
}

SEC("tp_btf/sys_enter")
int BPF_PROG(sys_enter, struct pt_regs *regs, long nr)
{
	if (!is_ours(nr))
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	struct task_state *st = state_of(task);
	if (!st)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	if (nr == NR_close) {
		on_close(task, st, regs, regs->di, now);
		return 0;
	}
	st->nr = nr;
	st->enter_ns = now;
	st->seq_ok = 0;
	st->seq0_ok = 0;
	st->no_sock = 0;
	if (is_send(nr)) {
		// Where the stream stands before this send: its start, unless
		// another send on the socket comes in first (checked at exit).
		// The exit takes the socket from here.
		__u64 ino = 0;
		struct sock *sk = sock_of_fd(task, regs->di, &ino);
		if (sk) {
			st->send_seq0 = cast(struct tcp_sock, sk)->write_seq;
			st->sk = (__u64)sk;
			st->ino = ino;
			st->seq0_ok = 1;
		} else {
			st->no_sock = 1;
		}
	}
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit, struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax;
	if (!is_ours(nr) || nr == NR_close)
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	struct task_state *st = state_of(task);
	if (!st)
		return 0;
	// Non-blocking sockets answer EAGAIN all the time; it says nothing.
	if (ret == -EAGAIN) {
		st->nr = NO_SYSCALL;
		return 0;
	}
	__u64 now = bpf_ktime_get_ns();
	long fd = regs->di;

	switch (nr) {
	case NR_write:
	case NR_sendto:
		on_data(task, st, regs, nr, ret, fd, DIR_EGRESS, 0, 0, regs->si, now);
		break;
	case NR_read:
		on_data(task, st, regs, nr, ret, fd, DIR_INGRESS, 0, 0, regs->si, now);
		break;
	case NR_recvfrom:
		// A peek is read again later; MSG_TRUNC discards the bytes.
		if (regs->r10 & MSG_PEEK)
			break;
		on_data(task, st, regs, nr, ret, fd, DIR_INGRESS, 0, 0,
			(regs->r10 & MSG_TRUNC) ? 0 : regs->si, now);
		break;
	case NR_writev:
		on_data(task, st, regs, nr, ret, fd, DIR_EGRESS, regs->si, regs->dx, 0, now);
		break;
	case NR_readv:
		on_data(task, st, regs, nr, ret, fd, DIR_INGRESS, regs->si, regs->dx, 0, now);
		break;
	case NR_sendmsg:
	case NR_recvmsg: {
		__u8 dir = nr == NR_sendmsg ? DIR_EGRESS : DIR_INGRESS;
		if (dir == DIR_INGRESS && (regs->dx & MSG_PEEK))
			break;
		struct user_msghdr m = {};
		bpf_probe_read_user(&m, sizeof(m), (void *)regs->si);
		on_data(task, st, regs, nr, ret, fd, dir, (__u64)m.msg_iov, m.msg_iovlen, 0, now);
		break;
	}
	case NR_sendmmsg:
		on_mmsg(task, st, regs, nr, ret, DIR_EGRESS, now);
		break;
	case NR_recvmmsg:
		if (regs->r10 & MSG_PEEK) // 4th argument
			break;
		on_mmsg(task, st, regs, nr, ret, DIR_INGRESS, now);
		break;
	case NR_sendfile:
		// The bytes come from a file: no payload, but the stream
		// learns their count and position.
		if (ret > 0)
			on_data(task, st, regs, nr, ret, fd, DIR_EGRESS, 0, 0, 0, now);
		break;
	case NR_connect:
		if (ret == 0 || ret == -EINPROGRESS)
			on_conn(task, st, regs, nr, fd, KIND_CONNECT, now);
		break;
	case NR_accept:
	case NR_accept4:
		if (ret >= 0)
			on_conn(task, st, regs, nr, ret, KIND_ACCEPT, now);
		break;
	}
	st->nr = NO_SYSCALL;
	return 0;
}

// tcp_sendmsg_locked runs with the socket locked, before TCP queues the
// bytes: write_seq is then exactly where this call's bytes start, even when
// another thread's send on the socket overlaps this one. The hook runs for
// every send on the host, traced or not (~100-200 ns each here, mostly the
// tracepoint's dispatch), so user space attaches it only when asked to or
// once sends of a traced process were seen to overlap (FLAG_SEQ_GUESS).
SEC("tp_btf/tcp_sendmsg_locked")
int BPF_PROG(tcp_sendmsg_locked, const struct sock *sk, const struct msghdr *msg,
	     const struct sk_buff *skb, int size_goal)
{
	struct task_state *st = bpf_task_storage_get(&tstate, bpf_get_current_task_btf(), 0, 0);
	if (!st || !st->traced || st->nr == NO_SYSCALL || st->seq_ok)
		return 0;
	st->send_seq = cast(struct tcp_sock, sk)->write_seq;
	st->seq_ok = 1;
	return 0;
}

// A new program image: its name (and so the comm filter's verdict) may
// have changed, and what we knew of its Go runtime no longer holds. User
// space hears of it to look at the new image.
SEC("tp_btf/sched_process_exec")
int BPF_PROG(sched_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__u32 tgid = task->tgid;
	bool was_traced = false;
	struct task_state *st = bpf_task_storage_get(&tstate, task, 0, 0);
	if (st)
		was_traced = st->traced;
	bpf_task_storage_delete(&tstate, task);
	bool was_go = bpf_map_delete_elem(&go_procs, &tgid) == 0;
	if (was_traced || was_go) {
		struct exec_event e = {.type = REC_EXEC, .pid = tgid};
		bpf_ringbuf_output(&events, &e, sizeof(e), rb_flags(sizeof(e)));
	}
	return 0;
}

// ---- Go runtime -----------------------------------------------------------

static __always_inline void go_output(__u8 kind, __u64 goid, __u64 parent)
{
	struct go_event e = {
		.type = REC_GO,
		.kind = kind,
		.ns = bpf_ktime_get_ns(),
		.goid = goid,
		.parent_goid = parent,
	};
	__u64 id = bpf_get_current_pid_tgid();
	e.pid = id >> 32;
	e.tid = (__u32)id;
	if (bpf_ringbuf_output(&events, &e, sizeof(e), rb_flags(sizeof(e))))
		count(CNT_DROPPED, 1);
	else
		count(CNT_GO_EVENTS, 1);
}

// Attached (when Config.GoCreation asks) at each RET instruction of
// runtime.newproc1, which returns the new g in RAX; the g records its
// parent's goid (Go >= 1.21). Off by default: net/http starts a goroutine
// per request, and the uprobe traps cost ~30% of a loopback HTTP server's
// throughput here; data events carry goid and parent goid anyway.
SEC("uprobe/go_newproc1_ret")
int go_newproc1_ret(struct pt_regs *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_info *gi = bpf_map_lookup_elem(&go_procs, &tgid);
	if (!gi)
		return 0;
	__u64 newg = ctx->ax;
	__u64 goid = 0, parent = 0;
	if (!newg)
		return 0;
	bpf_probe_read_user(&goid, sizeof(goid), (void *)(newg + gi->goid_off));
	bpf_probe_read_user(&parent, sizeof(parent), (void *)(newg + gi->parent_goid_off));
	go_output(GO_CREATE, goid, parent);
	return 0;
}

// runtime.casgstatus(gp *g, oldval, newval uint32): RAX=gp, RCX=newval.
// Fires on every goroutine state change; only the switch to _Grunning is
// reported. Optional: data events already carry the goid from R14.
SEC("uprobe/go_casgstatus")
int go_casgstatus(struct pt_regs *ctx)
{
	if ((__u32)ctx->cx != GO_STATUS_RUNNING)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct go_info *gi = bpf_map_lookup_elem(&go_procs, &tgid);
	if (!gi)
		return 0;
	__u64 goid = 0;
	bpf_probe_read_user(&goid, sizeof(goid), (void *)(ctx->ax + gi->goid_off));
	go_output(GO_RUNNING, goid, 0);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
