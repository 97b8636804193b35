// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Network evidence: TCP retransmits (IPv4 and IPv6, system-wide: they are
 * rare and usually fire in softirq context, where the owning process is not
 * current) and the socket send/recv syscalls of the traced set.
 *
 * tcp_retransmit: arg0 = TCP state, arg1 = sport, arg2 = dport,
 *   aux = family, ret = err; payload SOCKADDR = struct wp_tcp_addrs.
 *   pid/tid/cgroup are the socket's owner (WP_F_SOCK_OWNER) when a traced
 *   thread sent or received on it (`socks`, filled from the sock_send_length/
 *   sock_recv_length tracepoints in process context), else the current task.
 * net_send / net_recv: ts_ns = entry, duration_ns, arg0 = bytes moved
 *   (0 on error), arg1 = fd, arg2 = syscall nr, ret = syscall result. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"
#include "host.h"

char LICENSE[] SEC("license") = "GPL";

struct start {
	__u64 ts;
	__u64 fd;
	__u64 nr;
	__u64 op;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct start);
} starts SEC(".maps");

/* TCP socket -> the traced thread that last used it. LRU: sockets are never told to us closing. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct wp_sock_owner);
} socks SEC(".maps");

#define WP_IPPROTO_TCP 6

static __always_inline int note_owner(struct trace_event_raw_sock_msg_length *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 sk = (__u64)ctx->sk;
	struct wp_sock_owner *o, owner;

	if (!wp_traced(id >> 32) || ctx->protocol != WP_IPPROTO_TCP)
		return 0;
	o = bpf_map_lookup_elem(&socks, &sk);
	if (o && o->tid == (__u32)id)
		return 0;
	owner.pid = id >> 32;
	owner.tid = (__u32)id;
	owner.cgroup_id = bpf_get_current_cgroup_id();
	bpf_map_update_elem(&socks, &sk, &owner, BPF_ANY);
	return 0;
}

SEC("tp/sock/sock_send_length")
int handle_sock_send(struct trace_event_raw_sock_msg_length *ctx) { return note_owner(ctx); }
SEC("tp/sock/sock_recv_length")
int handle_sock_recv(struct trace_event_raw_sock_msg_length *ctx) { return note_owner(ctx); }

SEC("tp/tcp/tcp_retransmit_skb")
int handle_tcp_retransmit(struct trace_event_raw_tcp_retransmit_skb *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 ts = bpf_ktime_get_ns();
	__u64 sk = (__u64)ctx->skaddr;
	struct wp_sock_owner *owner;
	struct wp_payload_rec *p;
	struct wp_tcp_addrs *a;
	struct wp_event *e;

	owner = bpf_map_lookup_elem(&socks, &sk);
	if (owner)
		id = (__u64)owner->pid << 32 | owner->tid;

	/* Payload first: once user space sees the event, its payload is in its ring. */
	p = wp_start_payload(id, ts, WP_PL_SOCKADDR, -1);
	if (!p)
		goto event;
	p->hdr.conn = (__u64)ctx->skaddr;
	a = (struct wp_tcp_addrs *)p->data;
	/* Byte copy: the tracepoint's u8 arrays sit at offsets that unaligned ctx loads would need. */
	bpf_probe_read_kernel(a, offsetof(struct wp_tcp_addrs, pad), &ctx->sport);
	a->pad = 0;
	wp_finish_payload(p, sizeof(*a));
event:
	e = wp_reserve();
	if (!e)
		return 0;
	if (owner) {
		wp_fill_ids(e, WP_SRC_TCP, TCP_OP_RETRANSMIT, id);
		e->cgroup_id = owner->cgroup_id;
		__builtin_memset(e->comm, 0, sizeof(e->comm)); /* current is not the owner: user space names the tid */
		e->flags = WP_F_SOCK_OWNER;
	} else {
		wp_fill(e, WP_SRC_TCP, TCP_OP_RETRANSMIT, id);
	}
	e->ts_ns = ts;
	e->duration_ns = 0; /* an instant: ring memory is reused, so say so */
	e->arg0 = ctx->state;
	e->arg1 = ctx->sport;
	e->arg2 = ctx->dport;
	e->aux = ctx->family;
	e->ret = ctx->err;
	e->flags |= WP_F_HAS_PAYLOAD;
	wp_submit_event(e);

	return 0;
}

static __always_inline int enter(struct trace_event_raw_sys_enter *ctx, __u64 op)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct start s;

	if (!wp_traced(id >> 32))
		return 0;
	s.fd = ctx->args[0];
	s.nr = ctx->id;
	s.op = op;
	s.ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&starts, &id, &s, BPF_ANY);
	return 0;
}

static __always_inline int leave(struct trace_event_raw_sys_exit *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	struct wp_event *e;
	struct start *s;

	s = bpf_map_lookup_elem(&starts, &id);
	if (!s)
		return 0;
	e = wp_reserve();
	if (e) {
		wp_fill(e, WP_SRC_NET, s->op, id);
		e->ts_ns = s->ts;
		e->duration_ns = now - s->ts;
		e->arg0 = ctx->ret > 0 ? ctx->ret : 0;
		e->arg1 = (__s32)s->fd;
		e->arg2 = s->nr;
		e->ret = ctx->ret;
		wp_submit_event(e);
	}
	bpf_map_delete_elem(&starts, &id);
	return 0;
}

SEC("tp/syscalls/sys_enter_sendto")
int handle_enter_sendto(struct trace_event_raw_sys_enter *ctx) { return enter(ctx, NET_OP_SEND); }
SEC("tp/syscalls/sys_enter_sendmsg")
int handle_enter_sendmsg(struct trace_event_raw_sys_enter *ctx) { return enter(ctx, NET_OP_SEND); }
SEC("tp/syscalls/sys_enter_recvfrom")
int handle_enter_recvfrom(struct trace_event_raw_sys_enter *ctx) { return enter(ctx, NET_OP_RECV); }
SEC("tp/syscalls/sys_enter_recvmsg")
int handle_enter_recvmsg(struct trace_event_raw_sys_enter *ctx) { return enter(ctx, NET_OP_RECV); }
SEC("tp/syscalls/sys_exit_sendto")
int handle_exit_sendto(struct trace_event_raw_sys_exit *ctx) { return leave(ctx); }
SEC("tp/syscalls/sys_exit_sendmsg")
int handle_exit_sendmsg(struct trace_event_raw_sys_exit *ctx) { return leave(ctx); }
SEC("tp/syscalls/sys_exit_recvfrom")
int handle_exit_recvfrom(struct trace_event_raw_sys_exit *ctx) { return leave(ctx); }
SEC("tp/syscalls/sys_exit_recvmsg")
int handle_exit_recvmsg(struct trace_event_raw_sys_exit *ctx) { return leave(ctx); }
