// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Baselines for the benches, so they can tell the cost of being attached from
 * the work whyprobe's programs add on top: programs that do nothing (a uprobe
 * pair for bench/overhead.py, a sched_switch/sched_waking pair for
 * bench/sched_overhead.py), and the least a call-duration tracer can do (a
 * timestamp kept per thread at entry, one record at return; no arguments). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "whyprobe.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 26);
} floor_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u64);
} floor_start SEC(".maps");

SEC("uprobe")
int handle_floor_entry(struct pt_regs *ctx)
{
	__u64 *start = bpf_task_storage_get(&floor_start, bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);

	if (start)
		*start = bpf_ktime_get_ns();
	return 0;
}

SEC("uretprobe")
int handle_floor_return(struct pt_regs *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 *start = bpf_task_storage_get(&floor_start, bpf_get_current_task_btf(), 0, 0);
	struct wp_event *e;

	if (!start || !*start)
		return 0;
	e = bpf_ringbuf_reserve(&floor_events, sizeof(*e), 0);
	if (!e)
		return 0;
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = *start;
	e->duration_ns = now - *start;
	e->pid = bpf_get_current_pid_tgid() >> 32;
	*start = 0;
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 0;
}

SEC("uprobe")
int handle_bare_entry(struct pt_regs *ctx)
{
	return 0;
}

SEC("uretprobe")
int handle_bare_return(struct pt_regs *ctx)
{
	return 0;
}

SEC("tp_btf/sched_switch")
int handle_bare_switch(void *ctx)
{
	return 0;
}

SEC("tp_btf/sched_waking")
int handle_bare_waking(void *ctx)
{
	return 0;
}
