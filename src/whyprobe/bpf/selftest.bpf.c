// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* A known-count event source for the data-path tests and the drain bench:
 * one wp_event per getppid() of a traced process, numbered so that losses
 * and duplicates are visible. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define NR_GETPPID 110

__u64 seq = 0;

SEC("tp/syscalls/sys_enter_getppid")
int handle_getppid(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct wp_event *e;

	if (!wp_traced(id >> 32))
		return 0;
	e = wp_reserve();
	if (!e)
		return 0;
	wp_fill(e, WP_SRC_SYSCALL, NR_GETPPID, id);
	e->ts_ns = bpf_ktime_get_ns();
	e->duration_ns = 0;
	e->arg0 = __sync_fetch_and_add(&seq, 1);
	wp_submit_event(e);
	return 0;
}
