// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* On-CPU samples of traced threads: one perf event per CPU on the CPU clock
 * (PERF_COUNT_SW_CPU_CLOCK, ~99 Hz, opened by probes/profile.py) runs this
 * program on whatever task the timer interrupts; it keeps only traced tgids
 * (the shared pid filter) and records the thread's user stack (the shared
 * `stacks` map, frame pointers) and its CPython frames (pystacks.bpf.h).
 * These samples say what a thread ran during a GPU gap or an on-CPU slow call.
 *
 * Native stacks go to this object's own `sample_stacks`, keyed by a hash of
 * their content (like py_stacks), not to the shared `stacks` map: a stack-id
 * map fills for good with the ~100 new stacks a second one busy thread's
 * samples make (its leaf addresses vary), and then --stack CUDA calls would
 * lose theirs; content keys in an LRU never point at the wrong stack.
 *
 * Record: HOST/cpu_sample, ts_ns = sample time, duration_ns = 0 (an instant),
 * arg0 = sample period ns, arg1 = 1 when the timer hit the thread in kernel
 * mode (a syscall, a fault) and 0 in user mode, arg2 = user stack key in
 * sample_stacks (0 = none; user space turns it into stack_hash and stores 0),
 * aux = Python stack id with WP_F_HAS_PYSTACK, stack_id = -1. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"
#include "host.h"
#include "pystacks.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* Set by user space to the period the perf events were opened with. */
const volatile __u64 sample_period_ns = 0;

#define SAMPLE_DEPTH 127

struct sample_stack {
	__u32 n;
	__u32 pad;
	__u64 ips[SAMPLE_DEPTH + 1]; /* a power of two, so a masked index is in bounds */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct sample_stack);
} sample_stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sample_stack);
} sample_scratch SEC(".maps");

struct hash_walk {
	struct sample_stack *st;
	__u64 hash;
};

static long hash_ip(__u32 i, struct hash_walk *w)
{
	__u64 k = i;

	if (i >= w->st->n || i >= SAMPLE_DEPTH)
		return 1;
	/* Hide the checked bound from clang, which would drop the mask the verifier needs. */
	asm volatile("" : "+r"(k));
	k &= SAMPLE_DEPTH;
	w->hash = (w->hash ^ w->st->ips[k]) * 0x100000001b3ULL;
	return 0;
}

/* The interrupted thread's user stack, stored once per distinct content; its key (0 = none). */
static __always_inline __u64 sample_user_stack(struct bpf_perf_event_data *ctx)
{
	struct hash_walk w = {.hash = 0xcbf29ce484222325ULL};
	__u32 zero = 0;
	long bytes;

	w.st = bpf_map_lookup_elem(&sample_scratch, &zero);
	if (!w.st)
		return 0;
	bytes = bpf_get_stack(ctx, w.st->ips, SAMPLE_DEPTH * sizeof(__u64), BPF_F_USER_STACK);
	if (bytes <= 0)
		return 0;
	w.st->n = bytes / sizeof(__u64);
	w.st->pad = 0;
	bpf_loop(SAMPLE_DEPTH, hash_ip, &w, 0);
	w.hash |= 1; /* never 0 */
	bpf_map_update_elem(&sample_stacks, &w.hash, w.st, BPF_ANY);
	return w.hash;
}

SEC("perf_event")
int handle_sample(struct bpf_perf_event_data *ctx)
{
	/* CS of the interrupted context (ring 3 = user mode), read first: a direct context access,
	 * which the verifier rewrites to the sample's registers (a CO-RE read would read the
	 * context struct itself). Whole 8 bytes: the verifier refuses narrower reads of it. */
	__u64 cs = *(volatile __u64 *)&ctx->regs.cs;
	__u64 kernel_mode = (cs & 3) != 3;
	__u64 id = bpf_get_current_pid_tgid();
	struct wp_event *e;
	__u64 py, native;

	/* The idle task and kernel threads have tgid 0 or are never traced. */
	if (!(id >> 32) || !wp_traced(id >> 32))
		return 0;
	/* Walk before reserving: the ring slot is not held across the user reads. */
	py = wp_py_stack();
	native = sample_user_stack(ctx);
	e = wp_reserve();
	if (!e)
		return 0;
	wp_fill(e, WP_SRC_HOST, HOST_OP_CPU_SAMPLE, id);
	e->ts_ns = bpf_ktime_get_ns();
	e->duration_ns = 0;
	e->arg0 = sample_period_ns;
	e->arg1 = kernel_mode;
	e->arg2 = native;
	if (py) {
		e->aux = py;
		e->flags |= WP_F_HAS_PYSTACK;
	}
	wp_submit_event(e);
	return 0;
}
