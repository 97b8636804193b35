// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Every other syscall of the traced set as an individual SYSCALL record, for
 * `whyprobe footprint`: a tool call's window needs exact per-call counts and
 * times, which the per-(pid, tid, nr) totals of syscalls.bpf.c cannot split.
 *
 * syscalls.bpf.c already emits the telling syscalls (open, connect, exec,
 * clone, socket, file mmaps, ...) with their paths; this object emits exactly
 * the complement (same rule, `mmap_exec_only` set alike), so with both loaded
 * each syscall of a traced thread is one record: ts = entry, duration,
 * ret = return value, op = nr. exit/exit_group never return: recorded at
 * entry with duration 0. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"
#include "syscall_nrs.h"

char LICENSE[] SEC("license") = "GPL";


#define PROT_EXEC 4

/* Must equal the syscalls family's setting so the two objects never both emit one call. */
const volatile __u32 mmap_exec_only = 1;

struct start {
	__u64 ts;
	__u64 nr;
	__u64 mmap_fd;
	__u64 mmap_prot;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct start);
} starts SEC(".maps");

/* The syscalls object's wants_event(): those it records itself. */
static __always_inline bool emitted_elsewhere(__u32 nr, __s32 fd, __u64 prot)
{
	switch (nr) {
	case NR_OPEN: case NR_OPENAT: case NR_OPENAT2:
	case NR_CONNECT: case NR_ACCEPT: case NR_ACCEPT4: case NR_BIND:
	case NR_EXECVE: case NR_EXECVEAT:
	case NR_CLONE: case NR_CLONE3: case NR_FORK: case NR_VFORK:
	case NR_SOCKET:
	case NR_UNLINK: case NR_UNLINKAT: case NR_RENAME: case NR_RENAMEAT: case NR_RENAMEAT2:
		return true;
	case NR_MMAP:
		return fd >= 0 && (!mmap_exec_only || (prot & PROT_EXEC));
	}
	return false;
}

static __always_inline void emit(__u64 id, __u32 nr, __u64 ts, __u64 dur, __s64 ret)
{
	struct wp_event *e = wp_reserve();

	if (!e)
		return;
	wp_fill(e, WP_SRC_SYSCALL, nr, id);
	e->ts_ns = ts;
	e->duration_ns = dur;
	e->ret = ret;
	wp_submit_event(e);
}

SEC("tp/raw_syscalls/sys_enter")
int handle_sys_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct start s = {};
	__u32 nr;

	if (!wp_traced(id >> 32))
		return 0;
	nr = ctx->id;
	s.ts = bpf_ktime_get_ns();
	if (nr == NR_EXIT || nr == NR_EXIT_GROUP) {
		emit(id, nr, s.ts, 0, 0);
		return 0;
	}
	s.nr = nr;
	s.mmap_fd = ctx->args[4];
	s.mmap_prot = ctx->args[2];
	if (emitted_elsewhere(nr, s.mmap_fd, s.mmap_prot))
		return 0;
	bpf_map_update_elem(&starts, &id, &s, BPF_ANY);
	return 0;
}

SEC("tp/raw_syscalls/sys_exit")
int handle_sys_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	struct start *s;

	s = bpf_map_lookup_elem(&starts, &id);
	if (!s)
		return 0;
	emit(id, s->nr, s->ts, now - s->ts, ctx->ret);
	bpf_map_delete_elem(&starts, &id);
	return 0;
}
