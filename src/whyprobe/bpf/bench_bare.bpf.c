// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* The baseline of bench/overhead.py: an entry and a return program that do
 * nothing, so the bench can tell the cost of a uprobe pair itself from the
 * work whyprobe's CUDA programs add on top. */
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
