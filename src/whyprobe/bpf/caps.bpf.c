// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Tiny programs, one per program/attach type, loaded one at a time by
 * kernel/caps.py: what loads, attaches and fires here is what `check` reports
 * and what `trace` uses. Each counts its hits so "fires" is proven, not assumed. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 target_tgid = 0;

__u64 hits_tracepoint = 0;
__u64 hits_raw_tp = 0;
__u64 hits_tp_btf = 0;
__u64 hits_uprobe = 0;
__u64 hits_uprobe_multi = 0;
__u64 hits_uprobe_session = 0;
__u64 hits_kprobe = 0;
__u64 hits_fentry = 0;
__u64 hits_perf_event = 0;

static __always_inline bool mine(void)
{
	return (bpf_get_current_pid_tgid() >> 32) == target_tgid;
}

SEC("tp/syscalls/sys_enter_getppid")
int probe_tracepoint(void *ctx)
{
	if (mine())
		__sync_fetch_and_add(&hits_tracepoint, 1);
	return 0;
}

SEC("raw_tp/sys_enter")
int probe_raw_tp(void *ctx)
{
	if (mine())
		__sync_fetch_and_add(&hits_raw_tp, 1);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(probe_tp_btf, struct pt_regs *regs, long id)
{
	if (mine())
		__sync_fetch_and_add(&hits_tp_btf, 1);
	return 0;
}

SEC("uprobe")
int probe_uprobe(struct pt_regs *ctx)
{
	if (mine())
		__sync_fetch_and_add(&hits_uprobe, 1);
	return 0;
}

SEC("uprobe")
int probe_uprobe_multi(struct pt_regs *ctx)
{
	if (mine())
		__sync_fetch_and_add(&hits_uprobe_multi, 1);
	return 0;
}

/* Loaded as a session: it must run twice a call, at entry and at return. */
SEC("uprobe")
int probe_uprobe_session(struct pt_regs *ctx)
{
	if (mine())
		__sync_fetch_and_add(&hits_uprobe_session, 1);
	return 0;
}

SEC("kprobe/__do_sys_getppid")
int probe_kprobe(struct pt_regs *ctx)
{
	if (mine())
		__sync_fetch_and_add(&hits_kprobe, 1);
	return 0;
}

SEC("fentry/__do_sys_getppid")
int BPF_PROG(probe_fentry)
{
	if (mine())
		__sync_fetch_and_add(&hits_fentry, 1);
	return 0;
}

/* The profile family's program type: a CPU-clock sample of this process. */
SEC("perf_event")
int probe_perf_event(void *ctx)
{
	if (mine())
		__sync_fetch_and_add(&hits_perf_event, 1);
	return 0;
}
