// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Off-CPU intervals of traced threads: sched_switch keeps the switch-out
 * time per tid and emits one HOST/sched_switch record when the thread runs
 * again (no record at all for untraced threads); sched_waking notes who woke
 * a blocked thread (the waker is the blocker). Threads that take the CPU from
 * a traced thread, or wake one, are named in `names` even when untraced, so
 * user space can name a CPU hog.
 *
 * Record: ts_ns = switch-out, duration_ns = off-CPU ns, arg0 = prev_state,
 * arg1 = tid that took the CPU, arg2 = CPU, aux = waker tid (0 = unknown),
 * ret = waker pid, WP_F_PREEMPTED when still runnable at switch-out.
 *
 * Each program exists as tp_btf (preferred: BTF pointers) and raw_tp
 * (alternate); user space autoloads one pair, chosen by kernel/caps.py. */
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
	__u64 ts;
	__u64 prev_state;
	__u64 cgroup_id;
	__u32 preemptor;
	__u32 cpu;
	__u32 waker_tid;
	__u32 waker_pid;
	__u32 preempted;
	__u32 pad;
};

struct name {
	__u32 pid;
	__u32 pad;
	char comm[WP_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct offcpu);
} offcpu SEC(".maps");

/* tid -> (pid, comm) of preemptors and wakers; read by SchedFamily.finish. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct name);
} names SEC(".maps");

static __always_inline void remember_name(struct task_struct *t, __u32 tid)
{
	struct name n = {};

	n.pid = BPF_CORE_READ(t, tgid);
	BPF_CORE_READ_STR_INTO(&n.comm, t, comm);
	bpf_map_update_elem(&names, &tid, &n, BPF_ANY);
}

static __always_inline void switch_out(bool preempt, __u32 tid, __u32 tgid, struct task_struct *next, __u32 next_tid,
				       __u64 prev_state, __u64 now)
{
	struct offcpu o = {};

	if (prev_state & WP_TASK_DEAD_MASK)
		return;
	o.ts = now;
	o.prev_state = prev_state;
	o.cgroup_id = bpf_get_current_cgroup_id(); /* current is still prev here */
	o.preemptor = next_tid;
	o.cpu = bpf_get_smp_processor_id();
	o.preempted = prev_state == 0 || preempt;
	bpf_map_update_elem(&offcpu, &tid, &o, BPF_ANY);
	if (o.preemptor)
		remember_name(next, o.preemptor);
}

static __always_inline void switch_in(struct task_struct *next, __u32 tid, __u64 now)
{
	struct offcpu *o;
	struct wp_event *e;

	o = bpf_map_lookup_elem(&offcpu, &tid);
	if (!o)
		return;
	if (now - o->ts < min_offcpu_ns)
		goto out;
	e = wp_reserve();
	if (!e)
		goto out;
	wp_fill(e, WP_SRC_HOST, HOST_OP_SCHED_SWITCH, 0);
	/* current is the outgoing task: describe `next` instead. */
	e->pid = BPF_CORE_READ(next, tgid);
	e->tid = tid;
	BPF_CORE_READ_STR_INTO(&e->comm, next, comm);
	e->cgroup_id = o->cgroup_id;
	e->cpu = o->cpu;
	e->ts_ns = o->ts;
	e->duration_ns = now - o->ts;
	e->arg0 = o->prev_state;
	e->arg1 = o->preemptor;
	e->arg2 = o->cpu;
	e->aux = o->waker_tid;
	e->ret = o->waker_pid;
	if (o->preempted)
		e->flags |= WP_F_PREEMPTED;
	wp_submit_event(e);
out:
	bpf_map_delete_elem(&offcpu, &tid);
}

/* The pids are read by the caller: directly from BTF pointers in tp_btf
 * (no helper call on the path every context switch of the host takes),
 * through bpf_probe_read_kernel in raw_tp. The clock is read only when a
 * traced thread is involved. */
static __always_inline void on_switch(bool preempt, __u32 prev_tid, __u32 prev_tgid, struct task_struct *next, __u32 next_tid,
				      __u64 prev_state)
{
	__u64 now = 0;

	if (prev_tid && wp_traced(prev_tgid)) {
		now = bpf_ktime_get_ns();
		switch_out(preempt, prev_tid, prev_tgid, next, next_tid, prev_state, now);
	}
	if (bpf_map_lookup_elem(&offcpu, &next_tid))
		switch_in(next, next_tid, now ? now : bpf_ktime_get_ns());
}

static __always_inline void on_waking(__u32 tid)
{
	__u64 id;
	struct offcpu *o;

	o = bpf_map_lookup_elem(&offcpu, &tid);
	if (!o || o->preempted || o->waker_tid)
		return;
	/* sched_waking runs in the waker's context (sched_wakeup may run on the target CPU). */
	id = bpf_get_current_pid_tgid();
	o->waker_tid = (__u32)id;
	o->waker_pid = id >> 32;
	if (o->waker_tid)
		remember_name(bpf_get_current_task_btf(), o->waker_tid);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(handle_sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state)
{
	on_switch(preempt, prev->pid, prev->tgid, next, next->pid, prev_state);
	return 0;
}

SEC("tp_btf/sched_waking")
int BPF_PROG(handle_sched_waking, struct task_struct *p)
{
	on_waking(p->pid);
	return 0;
}

SEC("raw_tp/sched_switch")
int BPF_PROG(handle_sched_switch_raw, bool preempt, struct task_struct *prev, struct task_struct *next, unsigned int prev_state)
{
	on_switch(preempt, BPF_CORE_READ(prev, pid), BPF_CORE_READ(prev, tgid), next, BPF_CORE_READ(next, pid), prev_state);
	return 0;
}

SEC("raw_tp/sched_waking")
int BPF_PROG(handle_sched_waking_raw, struct task_struct *p)
{
	on_waking(BPF_CORE_READ(p, pid));
	return 0;
}
