// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* A producer of real event records at a rate no probe could reach on a small
 * host, so bench/ingest.py can measure the ring -> SQLite path on its own.
 * One run (BPF_PROG_TEST_RUN, user space calls it in a loop) writes `count`
 * cudaFree-shaped events through wp_reserve(), so a full ring is counted in
 * wp_drops exactly as the real probes count it.
 *
 * ctx (u64 each): count, pid, tid, seq, duration_ns, mode. Record i of the run has
 * arg1 = seq + i (gaps show drops), arg0 = a device pointer derived from it,
 * duration = duration_ns + (seq + i) % 1024 (a spread for the histograms).
 * mode 1 (details): openat events instead, each after its PATH payload
 * (a 46-byte path ending in seq + i in hex), as bpf/syscalls.bpf.c sends them.
 * mode 2 (new processes): cudaFree events, each from a new process
 * (pid = tid = pid + i), so user space meets a new pid with every record.
 * Returns how many events went into the ring. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define OP_CUDA_FREE 2 /* events.py */
#define NR_OPENAT 257
#define PATH_PREFIX "/usr/lib/python3/site-packages/mod_"
#define PREFIX_LEN (sizeof(PATH_PREFIX) - 1)
#define MAX_COUNT (1 << 23) /* bpf_loop's limit */

struct run {
	__u64 pid_tgid;
	__u64 seq;
	__u64 duration_ns;
	__u32 written;
	__u32 mode;
};

static __always_inline void path_payload(__u64 pid_tgid, __u64 ts, __u64 seq)
{
	struct wp_payload_rec *p = wp_start_payload(pid_tgid, ts, WP_PL_PATH, -1);

	if (!p)
		return;
	__builtin_memcpy(p->data, PATH_PREFIX, PREFIX_LEN);
	for (int k = 0; k < 8; k++) {
		__u8 x = (seq >> (28 - 4 * k)) & 15;

		p->data[PREFIX_LEN + k] = x < 10 ? '0' + x : 'a' + x - 10;
	}
	wp_finish_payload(p, PREFIX_LEN + 8);
}

static long produce_one(__u32 i, void *data)
{
	struct run *r = data;
	__u64 seq = r->seq + i;
	__u64 ts = bpf_ktime_get_ns();
	__u64 id = r->pid_tgid;
	struct wp_event *e;

	if (r->mode == 1)
		path_payload(id, ts, seq);
	else if (r->mode == 2)
		id += ((__u64)i << 32) + i;
	e = wp_reserve();
	if (!e)
		return 0;
	if (r->mode == 1) {
		wp_fill_ids(e, WP_SRC_SYSCALL, NR_OPENAT, id);
		e->flags = WP_F_HAS_PAYLOAD;
		e->ret = 3;
	} else {
		wp_fill_ids(e, WP_SRC_CUDA, OP_CUDA_FREE, id);
		e->arg0 = 0x7f0000000000ULL + (seq << 8);
	}
	e->ts_ns = ts;
	e->duration_ns = r->duration_ns + (seq & 1023);
	e->arg1 = seq;
	e->cgroup_id = 0;
	__builtin_memset(e->comm, 0, sizeof(e->comm));
	if (r->mode == 2)
		__builtin_memcpy(e->comm, "storm", 6);
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
		.mode = ctx->args[5],
	};
	__u64 count = ctx->args[0];

	if (count > MAX_COUNT)
		count = MAX_COUNT;
	bpf_loop(count, produce_one, &r, 0);
	return r.written;
}
