/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Op ids of the host families (sched, proc, block, net, syscalls); they
 * mirror events.py OPS (tests/unit/test_host_ops.py checks it). */
#ifndef __WP_HOST_H
#define __WP_HOST_H

/* WP_SRC_HOST */
#define HOST_OP_SCHED_SWITCH 1
#define HOST_OP_SCHED_WAKEUP 2
#define HOST_OP_PROCESS_EXEC 5
#define HOST_OP_PROCESS_EXIT 6
#define HOST_OP_PROCESS_FORK 7
#define HOST_OP_CPU_SAMPLE 16

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
