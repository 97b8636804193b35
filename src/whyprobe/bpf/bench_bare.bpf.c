// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Programs that do nothing, so the benches can tell the cost of being attached
 * from the work whyprobe's programs add on top: a uprobe pair for
 * bench/overhead.py, a sched_switch/sched_waking pair for bench/sched_overhead.py. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

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
