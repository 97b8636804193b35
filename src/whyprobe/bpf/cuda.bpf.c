// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* CUDA runtime (libcudart) and driver (libcuda) calls, for kernels without
 * uprobe sessions: an entry and a return program per library, each attached
 * with one uprobe_multi link. The work is in cuda.bpf.h. */
#include "cuda.bpf.h"

char LICENSE[] SEC("license") = "GPL";

SEC("uprobe")
int handle_cuda_entry(struct pt_regs *ctx)
{
	cuda_entry(ctx);
	return 0;
}

SEC("uretprobe")
int handle_cuda_return(struct pt_regs *ctx)
{
	return cuda_return(ctx);
}
