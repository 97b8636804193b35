// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* On-CPU samples of traced threads: one perf event per CPU on the CPU clock
 * (PERF_COUNT_SW_CPU_CLOCK, ~99 Hz, opened by probes/profile.py) runs this
 * program on whatever task the timer interrupts; it keeps only traced tgids
 * (the shared pid filter) and records the thread's user stack (the shared
 * `stacks` map, frame pointers) and its CPython frames (pystacks.bpf.h).
 * These samples say what a thread ran during a GPU gap or an on-CPU slow call.
 *
 * Record: HOST/cpu_sample, ts_ns = sample time, duration_ns = 0 (an instant),
 * arg0 = sample period ns, arg1 = 1 when the timer hit the thread in kernel
 * mode (a syscall, a fault) and 0 in user mode, arg2 = 0, aux = Python stack
 * id with WP_F_HAS_PYSTACK, stack_id = user stack (-1 = none). */
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
	__u64 py;

	/* The idle task and kernel threads have tgid 0 or are never traced. */
	if (!(id >> 32) || !wp_traced(id >> 32))
		return 0;
	/* Walk before reserving: the ring slot is not held across the user reads. */
	py = wp_py_stack();
	e = wp_reserve();
	if (!e)
		return 0;
	wp_fill(e, WP_SRC_HOST, HOST_OP_CPU_SAMPLE, id);
	e->ts_ns = bpf_ktime_get_ns();
	e->duration_ns = 0;
	e->arg0 = sample_period_ns;
	e->arg1 = kernel_mode;
	e->stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
	if (py) {
		e->aux = py;
		e->flags |= WP_F_HAS_PYSTACK;
	}
	wp_submit_event(e);
	return 0;
}
