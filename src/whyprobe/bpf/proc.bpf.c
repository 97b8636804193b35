// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Process lifecycle events of the traced set: fork, exec with the file name
 * and argv head as payloads, exit with the exit code. Enrolling children in
 * `targets` is targeting's job (follow.bpf.c), whatever families are on.
 *
 * process_fork: pid/tid = parent, arg0 = child pid, arg1 = child tid.
 * process_exec: arg0 = tid that called exec; payloads PATH (file name) and
 *               ARGV (NUL-separated) with the same (tid, ts_ns).
 * process_exit: (whole process) arg0 = raw exit_code, ret = exit status
 *               (code for exit(), -signal when killed).
 * Each program exists as tp_btf and raw_tp; user space autoloads one set. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"
#include "host.h"

char LICENSE[] SEC("license") = "GPL";

#define ARGV_MAX 1024
#define PATH_MAX_LEN 512

static __always_inline void on_fork(struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);
	struct wp_event *e;

	if (ctgid == ptgid || !wp_traced(ptgid))
		return;
	e = wp_reserve();
	if (!e)
		return;
	wp_fill(e, WP_SRC_HOST, HOST_OP_PROCESS_FORK, bpf_get_current_pid_tgid());
	e->ts_ns = bpf_ktime_get_ns();
	e->arg0 = ctgid;
	e->arg1 = BPF_CORE_READ(child, pid);
	wp_submit_event(e);
}

static __always_inline void emit_payload(__u64 id, __u64 ts, __u16 kind, const void *src, bool user, __u32 max)
{
	struct wp_payload_rec *p = wp_start_payload(id, ts, kind, -1);
	long n;

	if (!p)
		return;
	if (kind == WP_PL_ARGV) {
		n = bpf_probe_read_user(p->data, max & (WP_CHUNK_LEN - 1), src) == 0 ? max : 0;
	} else {
		n = user ? bpf_probe_read_user_str(p->data, PATH_MAX_LEN, src) : bpf_probe_read_kernel_str(p->data, PATH_MAX_LEN, src);
		if (n > 0)
			n--; /* drop the NUL */
	}
	wp_finish_payload(p, n);
}

static __always_inline void on_exec(struct task_struct *task, __u32 old_pid, struct linux_binprm *bprm)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 ts = bpf_ktime_get_ns();
	__u64 start, end, len;
	struct wp_event *e;

	if (!wp_traced(id >> 32))
		return;
	/* Payloads first: once user space sees the event, its payloads are in their ring. */
	emit_payload(id, ts, WP_PL_PATH, BPF_CORE_READ(bprm, filename), false, 0);
	start = BPF_CORE_READ(task, mm, arg_start);
	end = BPF_CORE_READ(task, mm, arg_end);
	len = end > start ? end - start : 0;
	if (len > ARGV_MAX)
		len = ARGV_MAX;
	if (len)
		emit_payload(id, ts, WP_PL_ARGV, (const void *)start, true, len);
	e = wp_reserve();
	if (!e)
		return;
	wp_fill(e, WP_SRC_HOST, HOST_OP_PROCESS_EXEC, id);
	e->ts_ns = ts;
	e->arg0 = old_pid;
	e->flags |= WP_F_HAS_PAYLOAD;
	wp_submit_event(e);
}

static __always_inline void on_exit(struct task_struct *task, bool group_dead)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	__s64 code;
	struct wp_event *e;

	if (!group_dead || !wp_traced(tgid))
		return;
	code = BPF_CORE_READ(task, exit_code);
	e = wp_reserve();
	if (!e)
		return;
	wp_fill(e, WP_SRC_HOST, HOST_OP_PROCESS_EXIT, id);
	e->ts_ns = bpf_ktime_get_ns();
	e->arg0 = code;
	e->ret = (code & 0x7f) ? -(code & 0x7f) : (code >> 8) & 0xff;
	wp_submit_event(e);
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle_fork, struct task_struct *parent, struct task_struct *child)
{
	on_fork(parent, child);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	on_exec(p, old_pid, bprm);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_exit, struct task_struct *p, bool group_dead)
{
	on_exit(p, group_dead);
	return 0;
}

SEC("raw_tp/sched_process_fork")
int BPF_PROG(handle_fork_raw, struct task_struct *parent, struct task_struct *child)
{
	on_fork(parent, child);
	return 0;
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(handle_exec_raw, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	on_exec(p, old_pid, bprm);
	return 0;
}

SEC("raw_tp/sched_process_exit")
int BPF_PROG(handle_exit_raw, struct task_struct *p, bool group_dead)
{
	on_exit(p, group_dead);
	return 0;
}
