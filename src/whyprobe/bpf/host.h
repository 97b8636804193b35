/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Op ids of the host families (sched, proc, block, net, syscalls); they
 * mirror events.py OPS (tests/unit/test_host_ops.py checks it). */
#ifndef __WP_HOST_H
#define __WP_HOST_H

/* WP_SRC_HOST */
#define HOST_OP_SCHED_SWITCH 1
#define HOST_OP_SCHED_WAKEUP 2
#define HOST_OP_OOM_KILL 4
#define HOST_OP_PROCESS_EXEC 5
#define HOST_OP_PROCESS_EXIT 6
#define HOST_OP_PROCESS_FORK 7
#define HOST_OP_CPU_SAMPLE 16
#define HOST_OP_DIRECT_RECLAIM 20 /* 10-12 are Ingero's pod_restart, pod_eviction, pod_oom_kill */
#define HOST_OP_MEMCG_RECLAIM 21
#define HOST_OP_COMPACTION 22

/* WP_SRC_IO */
#define IO_OP_READ 1
#define IO_OP_WRITE 2
#define IO_OP_DISCARD 3
#define IO_OP_FLUSH 4

/* WP_SRC_TCP */
#define TCP_OP_RETRANSMIT 1

/* WP_SRC_NET */
#define NET_OP_SEND 1
#define NET_OP_RECV 2

/* task_struct->__state bits of a task that will never run again. */
#define WP_TASK_DEAD_MASK (0x80 | 0x20 | 0x10) /* TASK_DEAD | EXIT_ZOMBIE | EXIT_DEAD */

/* Last traced thread that sent or received on a TCP socket (net.bpf.c `socks`). */
struct wp_sock_owner {
	__u64 cgroup_id;
	__u32 pid;
	__u32 tid;
};

/* Payload of a tcp_retransmit_skb event: the tracepoint's address block as is. */
struct wp_tcp_addrs {
	__u16 sport;
	__u16 dport;
	__u16 family;
	__u8 saddr[4];
	__u8 daddr[4];
	__u8 saddr_v6[16];
	__u8 daddr_v6[16];
	__u16 pad;
};

#endif /* __WP_HOST_H */
