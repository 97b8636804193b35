// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Test-only: a uprobe that records one event with the Python stack, the way
 * cuda.bpf.c does, to check pystacks.bpf.h on its own. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"
#include "pystacks.bpf.h"

char LICENSE[] SEC("license") = "GPL";

SEC("uprobe")
int handle_probe(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct wp_event *e;
	__u64 py;

	if (!wp_traced(id >> 32))
		return 0;
	py = wp_py_stack();
	e = wp_reserve();
	if (!e)
		return 0;
	wp_fill(e, WP_SRC_CUDA, 1, id);
	e->ts_ns = bpf_ktime_get_ns();
	e->stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
	if (py) {
		e->aux = py;
		e->flags |= WP_F_HAS_PYSTACK;
	}
	wp_submit_event(e);
	return 0;
}
