// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Off-CPU intervals of traced threads: sched_switch keeps the switch-out
 * time per thread and emits one HOST/sched_switch record when the thread runs
 * again (no record at all for untraced threads); sched_waking notes who woke
 * a blocked thread (the waker is the blocker). Threads that take the CPU from
 * a traced thread, or wake one, are named in `names` even when untraced, so
 * user space can name a CPU hog.
 *
 * Record: ts_ns = switch-out, duration_ns = off-CPU ns, arg0 = prev_state,
 * arg1 = tid that took the CPU, arg2 = CPU, ret = waker pid,
 * WP_F_PREEMPTED when still runnable at switch-out; WP_F_FAULT_WAIT when it
 * blocked outside any syscall (its user-entry pt_regs have orig_ax == -1, as
 * exception entry leaves them): waiting in a page fault (major fault I/O, page
 * or mmap locks), or in memory.high throttling on the way back to user mode.
 * aux depends on the flag:
 * blocked -> waker tid (0 = unknown); preempted -> ns the thread in arg1 ran
 * during the interval (growth of its se.sum_exec_runtime from switch-out to
 * switch-in, wherever it ran; 0 = unknown, e.g. it exited meanwhile).
 *
 * Cost: every context switch of the host runs sched_switch, every wake-up
 * sched_waking. For untraced threads the work is a byte of the pid set per
 * task involved (an inlined array lookup); task storage and the interval
 * hash are touched only for traced tgids.
 *
 * Each program exists as tp_btf (preferred: BTF pointers, interval state in
 * task storage) and raw_tp (alternate: no trusted pointer to `next`, so the
 * state is in a hash by tid); user space autoloads one pair, chosen by
 * kernel/caps.py. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"
#include "host.h"

char LICENSE[] SEC("license") = "GPL";

/* Shorter intervals are not emitted (0 = all). */
const volatile __u64 min_offcpu_ns = 0;

struct offcpu {
	__u64 ts; /* switch-out; 0 = no interval open */
	__u64 prev_state;
	__u64 cgroup_id;
	__u64 preemptor_task;    /* struct task_struct * that took the CPU (preempted only) */
	__u64 preemptor_runtime; /* its se.sum_exec_runtime at switch-out */
	__u32 preemptor;
	__u32 cpu;
	__u32 waker_tid;
	__u32 waker_pid;
	__u32 preempted;
	__u32 named; /* tp_btf: the thread's comm went into a record already */
	__u32 fault_wait; /* blocked outside a syscall: in a page fault (tp_btf only) */
	__u32 pad;
};

struct name {
	__u32 pid;
	__u32 pad;
	char comm[WP_COMM_LEN];
};

/* tp_btf: created at a traced thread's first switch-out, freed with the thread. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct offcpu);
} offcpu_task SEC(".maps");

/* raw_tp: tid -> open interval (shrunk to 1 entry by user space under tp_btf). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct offcpu);
} offcpu_tid SEC(".maps");

/* tid -> (pid, comm) of preemptors and wakers; read by SchedFamily.finish. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct name);
} names SEC(".maps");

/* The same thread shows up on every switch of a busy pair: refresh its entry
 * in place rather than rewrite the LRU. */
static __always_inline void remember_name(struct task_struct *t, __u32 tid)
{
	struct name *p = bpf_map_lookup_elem(&names, &tid);
	struct name n = {};

	if (p) {
		p->pid = BPF_CORE_READ(t, tgid);
		BPF_CORE_READ_STR_INTO(&p->comm, t, comm);
		return;
	}
	n.pid = BPF_CORE_READ(t, tgid);
	BPF_CORE_READ_STR_INTO(&n.comm, t, comm);
	bpf_map_update_elem(&names, &tid, &n, BPF_ANY);
}

static __always_inline void switch_out(struct offcpu *o, bool preempt, struct task_struct *next, __u32 next_tid,
				       __u64 prev_state, __u64 now)
{
	o->ts = now;
	o->prev_state = prev_state;
	/* current is still prev here. Read once per thread under tp_btf (task
	 * storage persists), like the CUDA probes: the helper is ~20 ns a switch. */
	if (!o->cgroup_id)
		o->cgroup_id = bpf_get_current_cgroup_id();
	o->preemptor = next_tid;
	o->cpu = bpf_get_smp_processor_id();
	o->waker_tid = o->waker_pid = 0;
	o->preempted = prev_state == 0 || preempt;
	o->fault_wait = 0;
	o->preemptor_task = 0;
	/* Only a preemptor is blamed (a blocked thread's blocker is its waker), so
	 * only a preemptor needs a name. */
	if (!next_tid || !o->preempted)
		return;
	/* next is not running: its runtime is up to date at this switch. */
	o->preemptor_task = (__u64)next;
	o->preemptor_runtime = BPF_CORE_READ(next, se.sum_exec_runtime);
	remember_name(next, next_tid);
}

/* Entered the kernel by an exception, not a syscall: entry code stores -1 in
 * orig_ax of the user-entry registers for exceptions, the syscall nr for syscalls. */
static __always_inline __u32 user_exception(struct task_struct *t)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(t);

	return regs && (long)BPF_CORE_READ(regs, orig_ax) == -1;
}

/* CPU time the preemptor got since switch-out. Read through the saved pointer
 * with bpf_probe_read_kernel, which cannot fault: a task that exited is freed
 * only after an RCU grace period and its slab may be reused, so the pid is
 * checked and anything else reads as unknown (0). */
static __always_inline __u64 preemptor_ran(struct offcpu *o)
{
	struct task_struct *t = (struct task_struct *)o->preemptor_task;
	__u64 runtime;

	if (!t || (__u32)BPF_CORE_READ(t, pid) != o->preemptor)
		return 0;
	runtime = BPF_CORE_READ(t, se.sum_exec_runtime);
	return runtime > o->preemptor_runtime ? runtime - o->preemptor_runtime : 0;
}

static __always_inline void emit(struct offcpu *o, struct task_struct *next, __u32 pid, __u32 tid, __u64 now)
{
	struct wp_event *e;

	if (now - o->ts < min_offcpu_ns)
		return;
	e = wp_reserve();
	if (!e)
		return;
	/* current is the outgoing task: describe `next`, field by field. */
	e->ts_ns = o->ts;
	e->duration_ns = now - o->ts;
	e->arg0 = o->prev_state;
	e->arg1 = o->preemptor;
	e->arg2 = o->cpu;
	e->aux = o->preempted ? preemptor_ran(o) : o->waker_tid;
	e->cgroup_id = o->cgroup_id;
	e->ret = o->waker_pid;
	e->pid = pid;
	e->tid = tid;
	e->cpu = o->cpu;
	e->stack_id = -1;
	e->source = WP_SRC_HOST;
	e->op = HOST_OP_SCHED_SWITCH;
	e->flags = o->preempted ? WP_F_PREEMPTED : (o->fault_wait ? WP_F_FAULT_WAIT : 0);
	/* User space names a tid from its first record that carries a comm. */
	if (!o->named) {
		BPF_CORE_READ_STR_INTO(&e->comm, next, comm);
		o->named = 1;
	} else {
		__builtin_memset(e->comm, 0, sizeof(e->comm));
	}
	wp_submit_event(e);
}

static __always_inline void note_waker(struct offcpu *o)
{
	__u64 id;

	if (!o->ts || o->preempted || o->waker_tid)
		return;
	/* sched_waking runs in the waker's context (sched_wakeup may run on the target CPU). */
	id = bpf_get_current_pid_tgid();
	o->waker_tid = (__u32)id;
	o->waker_pid = id >> 32;
	if (o->waker_tid)
		remember_name(bpf_get_current_task_btf(), o->waker_tid);
}

/* ---- tp_btf: state in task storage; pids read straight from BTF pointers. */

SEC("tp_btf/sched_switch")
int BPF_PROG(handle_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state)
{
	struct offcpu *o;
	__u64 now = 0;

	if (prev->pid && !(prev_state & WP_TASK_DEAD_MASK) && wp_traced(prev->tgid)) {
		o = bpf_task_storage_get(&offcpu_task, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (o) {
			now = bpf_ktime_get_ns();
			switch_out(o, preempt, next, next->pid, prev_state, now);
			if (!o->preempted)
				o->fault_wait = user_exception(prev);
		}
	}
	if (!wp_traced(next->tgid))
		return 0;
	o = bpf_task_storage_get(&offcpu_task, next, 0, 0);
	if (o && o->ts) {
		emit(o, next, next->tgid, next->pid, now ? now : bpf_ktime_get_ns());
		o->ts = 0;
	}
	return 0;
}

SEC("tp_btf/sched_waking")
int BPF_PROG(handle_sched_waking, struct task_struct *p)
{
	struct offcpu *o;

	if (!wp_traced(p->tgid))
		return 0;
	o = bpf_task_storage_get(&offcpu_task, p, 0, 0);
	if (o)
		note_waker(o);
	return 0;
}

/* ---- raw_tp: state in a hash by tid; pids read through bpf_probe_read_kernel. */

SEC("raw_tp/sched_switch")
int BPF_PROG(handle_sched_switch_raw, bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state)
{
	__u32 prev_tid = BPF_CORE_READ(prev, pid), next_tid = BPF_CORE_READ(next, pid);
	struct offcpu *o, fresh = {};
	__u64 now = 0;

	if (prev_tid && !(prev_state & WP_TASK_DEAD_MASK) && wp_traced(BPF_CORE_READ(prev, tgid))) {
		now = bpf_ktime_get_ns();
		switch_out(&fresh, preempt, next, next_tid, prev_state, now);
		bpf_map_update_elem(&offcpu_tid, &prev_tid, &fresh, BPF_ANY);
	}
	if (!wp_traced(BPF_CORE_READ(next, tgid)))
		return 0;
	o = bpf_map_lookup_elem(&offcpu_tid, &next_tid);
	if (o) {
		emit(o, next, BPF_CORE_READ(next, tgid), next_tid, now ? now : bpf_ktime_get_ns());
		bpf_map_delete_elem(&offcpu_tid, &next_tid);
	}
	return 0;
}

SEC("raw_tp/sched_waking")
int BPF_PROG(handle_sched_waking_raw, struct task_struct *p)
{
	__u32 tid = BPF_CORE_READ(p, pid);
	struct offcpu *o;

	if (!wp_traced(BPF_CORE_READ(p, tgid)))
		return 0;
	o = bpf_map_lookup_elem(&offcpu_tid, &tid);
	if (o)
		note_waker(o);
	return 0;
}
