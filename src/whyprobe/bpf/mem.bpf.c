// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Memory stalls of traced threads: direct reclaim, memcg reclaim (memory.high,
 * memory.max, v1 limits) and compaction, each a begin/end pair of tracepoints
 * that run in the stalled thread's own context; and OOM kills, host-wide
 * (rare, and the victim is often another process of the job).
 *
 * HOST/direct_reclaim, HOST/memcg_reclaim: ts_ns = begin, duration_ns,
 *   arg0 = pages reclaimed, arg1 = allocation order, arg2 = gfp flags.
 * HOST/compaction: ts_ns = begin, duration_ns, arg0 = status (compact_result),
 *   arg1 = sync.
 * HOST/oom_kill: an instant; pid/tid = the task whose allocation invoked the
 *   OOM killer, arg0 = victim pid, arg1 = victim anon rss (pages),
 *   arg2 = victim file rss (pages).
 *
 * Major page faults need no program here: sched.bpf.c flags a blocked
 * interval that began outside any syscall (WP_F_FAULT_WAIT).
 *
 * Cost: these tracepoints fire only while the kernel reclaims, compacts or
 * kills, so an idle family costs nothing per call of the workload. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"
#include "host.h"

char LICENSE[] SEC("license") = "GPL";

enum { STALL_DIRECT, STALL_MEMCG, STALL_COMPACT, STALL_KINDS };

struct stall {
	__u64 ts;
	__u64 order;
	__u64 gfp;
};

/* Open stalls per thread, one slot per kind (a reclaim can run inside compaction's caller). */
struct stalls {
	struct stall slot[STALL_KINDS];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct stalls);
} open_stalls SEC(".maps");

static __always_inline int stall_begin(int kind, __u64 order, __u64 gfp)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct stalls *s;

	if (!wp_traced(id >> 32))
		return 0;
	s = bpf_task_storage_get(&open_stalls, bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!s || kind < 0 || kind >= STALL_KINDS)
		return 0;
	s->slot[kind].order = order;
	s->slot[kind].gfp = gfp;
	s->slot[kind].ts = bpf_ktime_get_ns();
	return 0;
}

static __always_inline int stall_end(int kind, __u16 op, __u64 result, __u64 sync)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	struct wp_event *e;
	struct stalls *s;
	struct stall *st;

	if (kind < 0 || kind >= STALL_KINDS)
		return 0;
	s = bpf_task_storage_get(&open_stalls, bpf_get_current_task_btf(), 0, 0);
	if (!s)
		return 0;
	st = &s->slot[kind];
	if (!st->ts)
		return 0;
	e = wp_reserve();
	if (e) {
		wp_fill(e, WP_SRC_HOST, op, id);
		e->ts_ns = st->ts;
		e->duration_ns = now - st->ts;
		e->arg0 = result;
		e->arg1 = kind == STALL_COMPACT ? sync : st->order;
		e->arg2 = kind == STALL_COMPACT ? 0 : st->gfp;
		wp_submit_event(e);
	}
	st->ts = 0;
	return 0;
}

SEC("tp/vmscan/mm_vmscan_direct_reclaim_begin")
int handle_direct_reclaim_begin(struct trace_event_raw_mm_vmscan_direct_reclaim_begin_template *ctx)
{
	return stall_begin(STALL_DIRECT, ctx->order, ctx->gfp_flags);
}

SEC("tp/vmscan/mm_vmscan_direct_reclaim_end")
int handle_direct_reclaim_end(struct trace_event_raw_mm_vmscan_direct_reclaim_end_template *ctx)
{
	return stall_end(STALL_DIRECT, HOST_OP_DIRECT_RECLAIM, ctx->nr_reclaimed, 0);
}

SEC("tp/vmscan/mm_vmscan_memcg_reclaim_begin")
int handle_memcg_reclaim_begin(struct trace_event_raw_mm_vmscan_direct_reclaim_begin_template *ctx)
{
	return stall_begin(STALL_MEMCG, ctx->order, ctx->gfp_flags);
}

SEC("tp/vmscan/mm_vmscan_memcg_reclaim_end")
int handle_memcg_reclaim_end(struct trace_event_raw_mm_vmscan_direct_reclaim_end_template *ctx)
{
	return stall_end(STALL_MEMCG, HOST_OP_MEMCG_RECLAIM, ctx->nr_reclaimed, 0);
}

SEC("tp/compaction/mm_compaction_begin")
int handle_compaction_begin(struct trace_event_raw_mm_compaction_begin *ctx)
{
	return stall_begin(STALL_COMPACT, 0, 0);
}

SEC("tp/compaction/mm_compaction_end")
int handle_compaction_end(struct trace_event_raw_mm_compaction_end *ctx)
{
	return stall_end(STALL_COMPACT, HOST_OP_COMPACTION, (__u64)(__s64)ctx->status, ctx->sync);
}

SEC("tp/oom/mark_victim")
int handle_oom_victim(struct trace_event_raw_mark_victim *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct wp_event *e = wp_reserve();

	if (!e)
		return 0;
	wp_fill(e, WP_SRC_HOST, HOST_OP_OOM_KILL, id);
	e->ts_ns = bpf_ktime_get_ns();
	e->duration_ns = 0;
	e->arg0 = ctx->pid;
	e->arg1 = ctx->anon_rss;
	e->arg2 = ctx->file_rss;
	wp_submit_event(e);
	return 0;
}
