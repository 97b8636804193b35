// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* A producer of real event records at a rate no probe could reach on a small
 * host, so bench/ingest.py can measure the ring -> SQLite path on its own.
 * One run (BPF_PROG_TEST_RUN, user space calls it in a loop) writes `count`
 * cudaFree-shaped events through wp_reserve(), so a full ring is counted in
 * wp_drops exactly as the real probes count it.
 *
 * ctx (u64 each): count, pid, tid, seq, duration_ns. Record i of the run has
 * arg1 = seq + i (gaps show drops), arg0 = a device pointer derived from it,
 * duration = duration_ns + (seq + i) % 1024 (a spread for the histograms).
 * Returns how many records went into the ring. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define OP_CUDA_FREE 2 /* events.py */
#define MAX_COUNT (1 << 23) /* bpf_loop's limit */

struct run {
	__u64 pid_tgid;
	__u64 seq;
	__u64 duration_ns;
	__u32 written;
};

static long produce_one(__u32 i, void *data)
{
	struct run *r = data;
	struct wp_event *e = wp_reserve();
	__u64 seq = r->seq + i;

	if (!e)
		return 0;
	wp_fill_ids(e, WP_SRC_CUDA, OP_CUDA_FREE, r->pid_tgid);
	e->ts_ns = bpf_ktime_get_ns();
	e->duration_ns = r->duration_ns + (seq & 1023);
	e->arg0 = 0x7f0000000000ULL + (seq << 8);
	e->arg1 = seq;
	e->cgroup_id = 0;
	__builtin_memset(e->comm, 0, sizeof(e->comm));
	wp_submit_event(e);
	r->written++;
	return 0;
}

SEC("raw_tp")
int produce(struct bpf_raw_tracepoint_args *ctx)
{
	struct run r = {
		.pid_tgid = ctx->args[1] << 32 | (__u32)ctx->args[2],
		.seq = ctx->args[3],
		.duration_ns = ctx->args[4],
	};
	__u64 count = ctx->args[0];

	if (count > MAX_COUNT)
		count = MAX_COUNT;
	bpf_loop(count, produce_one, &r, 0);
	return r.written;
}
