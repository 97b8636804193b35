// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* CUDA runtime and driver calls through one uprobe session program per
 * library (kernel 6.13+): the same program runs at entry and at return, and
 * an entry that returns non-zero cancels that call's return probe. So a
 * process that is not traced pays for the entry breakpoint only, not for the
 * return trampoline as well (bench/overhead.py: ~0.6 us a call less here).
 * Its own object because libbpf 1.1 cannot leave the session kfuncs
 * unresolved on older kernels, where cuda.bpf.c serves instead. */
#include "cuda.bpf.h"

char LICENSE[] SEC("license") = "GPL";

extern bool bpf_session_is_return(void) __ksym;

SEC("uprobe")
int handle_cuda_session(struct pt_regs *ctx)
{
	if (bpf_session_is_return())
		return cuda_return(ctx);
	return cuda_entry(ctx);
}
