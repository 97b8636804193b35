/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The CUDA probes' state and work, shared by the two ways they attach:
 * cuda.bpf.c (an entry and a return program, uprobe_multi) and
 * cuda_session.bpf.c (one session program, kernels with uprobe sessions).
 * One entry and one return path serve every probed symbol of a library; the
 * attach cookie says which op the symbol is and where its arguments are
 * (cuda.h). Entry stores {ts, args} in the thread's slot for that source;
 * return emits one wp_event with the duration and the CUDA error code, and
 * always clears the slot. */
#ifndef __WP_CUDA_BPF_H
#define __WP_CUDA_BPF_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"
#include "cuda.h"
#include "pystacks.bpf.h"

struct call {
	__u64 ts;
	__u64 cookie;
	__u64 arg0;
	__u64 arg1;
	__u64 arg2;
	__u64 outp;     /* user pointer whose value becomes arg1 at return (allocations) */
	__u64 py;       /* Python stack id in py_stacks (0 = none) */
	__s32 stack_id;
	__u32 pad;
};

/* Calls in flight, per thread: task storage costs no hashing or locking on
 * the hot path (a hash map keyed by tid cost ~0.5 us more per call). Slot 0
 * is the runtime, slot 1 the driver: the runtime calls into the driver on
 * the same thread. ts == 0 marks an empty slot.
 * The thread's comm goes into its first event only (user space names a tid
 * once; later records carry an empty comm) and its cgroup id is read once:
 * the two helpers were ~100 ns of every return. */
struct calls {
	struct call slot[2];
	__u64 cgroup_id;
	__u32 named;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct calls);
} starts SEC(".maps");

static __always_inline struct calls *task_calls(bool create)
{
	return bpf_task_storage_get(&starts, bpf_get_current_task_btf(), 0, create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

static __always_inline struct call *call_slot(struct calls *cs, __u64 cookie)
{
	return &cs->slot[CUDA_COOKIE_SOURCE(cookie) == WP_SRC_DRIVER ? 1 : 0];
}

/* Stack argument k (0-based): the return address is at sp, args follow in 8-byte slots. */
static __always_inline __u64 stack_arg(struct pt_regs *ctx, int k)
{
	__u64 v = 0;

	bpf_probe_read_user(&v, sizeof(v), (void *)(PT_REGS_SP(ctx) + 8 + 8 * k));
	return v;
}

static __always_inline __u64 u32_of(__u64 v)
{
	return v & 0xffffffffULL;
}

/* dim3 passed in two registers: x | y << 32, then z. */
static __always_inline __u64 dim3_product(__u64 xy, __u64 z)
{
	return u32_of(xy) * (xy >> 32) * u32_of(z);
}

/* cudaLaunchConfig_t and CUlaunchConfig agree: grid@0 (3 x u32), stream@32. */
static __always_inline void read_launch_cfg(struct call *c, __u64 cfg)
{
	__u32 grid[3] = {};
	__u64 stream = 0;

	bpf_probe_read_user(grid, sizeof(grid), (void *)cfg);
	bpf_probe_read_user(&stream, sizeof(stream), (void *)(cfg + 32));
	c->arg1 = (__u64)grid[0] * grid[1] * grid[2];
	c->arg2 = stream;
}

static __always_inline void read_args(struct pt_regs *ctx, struct call *c, __u64 cookie)
{
	switch (CUDA_COOKIE_LAYOUT(cookie)) {
	case CL_MALLOC:
		c->outp = PT_REGS_PARM1(ctx);
		c->arg0 = PT_REGS_PARM2(ctx);
		break;
	case CL_MALLOC_ASYNC:
		c->outp = PT_REGS_PARM1(ctx);
		c->arg0 = PT_REGS_PARM2(ctx);
		c->arg2 = PT_REGS_PARM3(ctx);
		break;
	case CL_MALLOC_FLAGS:
		c->arg0 = PT_REGS_PARM2(ctx);
		c->arg1 = u32_of(PT_REGS_PARM3(ctx));
		break;
	case CL_PTR:
		c->arg0 = PT_REGS_PARM1(ctx);
		break;
	case CL_PTR_STREAM:
		c->arg0 = PT_REGS_PARM1(ctx);
		c->arg2 = PT_REGS_PARM2(ctx);
		break;
	case CL_LAUNCH:
		c->arg0 = PT_REGS_PARM1(ctx);
		c->arg1 = dim3_product(PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx));
		c->arg2 = stack_arg(ctx, 1);
		break;
	case CL_LAUNCH_CFG:
		c->arg0 = PT_REGS_PARM2(ctx);
		read_launch_cfg(c, PT_REGS_PARM1(ctx));
		break;
	case CL_MEMCPY:
		c->arg0 = PT_REGS_PARM3(ctx);
		c->arg1 = u32_of(PT_REGS_PARM4(ctx));
		break;
	case CL_MEMCPY_ASYNC:
		c->arg0 = PT_REGS_PARM3(ctx);
		c->arg1 = u32_of(PT_REGS_PARM4(ctx));
		c->arg2 = PT_REGS_PARM5(ctx);
		break;
	case CL_MEMCPY2D:
		c->arg0 = PT_REGS_PARM5(ctx) * ctx->r9;
		c->arg1 = u32_of(stack_arg(ctx, 0));
		break;
	case CL_MEMCPY2D_ASYNC:
		c->arg0 = PT_REGS_PARM5(ctx) * ctx->r9;
		c->arg1 = u32_of(stack_arg(ctx, 0));
		c->arg2 = stack_arg(ctx, 1);
		break;
	case CL_MEMCPY_PEER:
		c->arg0 = PT_REGS_PARM5(ctx);
		break;
	case CL_MEMCPY_PEER_ASYNC:
		c->arg0 = PT_REGS_PARM5(ctx);
		c->arg2 = ctx->r9;
		break;
	case CL_MEMSET:
		c->arg0 = PT_REGS_PARM3(ctx);
		c->arg1 = u32_of(PT_REGS_PARM2(ctx));
		break;
	case CL_MEMSET_ASYNC:
		c->arg0 = PT_REGS_PARM3(ctx);
		c->arg1 = u32_of(PT_REGS_PARM2(ctx));
		c->arg2 = PT_REGS_PARM4(ctx);
		break;
	case CL_STREAM:
		c->arg2 = PT_REGS_PARM1(ctx);
		break;
	case CL_STREAM_WAIT:
		c->arg0 = PT_REGS_PARM2(ctx);
		c->arg2 = PT_REGS_PARM1(ctx);
		break;
	case CL_CU_LAUNCH:
		c->arg0 = PT_REGS_PARM1(ctx);
		c->arg1 = u32_of(PT_REGS_PARM2(ctx)) * u32_of(PT_REGS_PARM3(ctx)) * u32_of(PT_REGS_PARM4(ctx));
		c->arg2 = stack_arg(ctx, 2);
		break;
	case CL_CU_MEMCPY:
		c->arg0 = PT_REGS_PARM3(ctx);
		c->arg1 = CUDA_COOKIE_KIND(cookie);
		break;
	case CL_CU_MEMCPY_ASYNC:
		c->arg0 = PT_REGS_PARM3(ctx);
		c->arg1 = CUDA_COOKIE_KIND(cookie);
		c->arg2 = PT_REGS_PARM4(ctx);
		break;
	case CL_SIZE2:
		c->arg0 = PT_REGS_PARM2(ctx);
		c->arg1 = PT_REGS_PARM1(ctx);
		break;
	case CL_GET_FUNC:
		c->outp = PT_REGS_PARM1(ctx);
		c->arg0 = PT_REGS_PARM2(ctx);
		c->arg2 = PT_REGS_PARM3(ctx);
		break;
	case CL_GET_FUNC_OF:
		c->outp = PT_REGS_PARM1(ctx);
		c->arg0 = PT_REGS_PARM2(ctx);
		break;
	default:
		break;
	}
}

/* Returns 1 when the call is not recorded, which tells a session probe to
 * skip this call's return. */
static __always_inline int cuda_entry(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 cookie = bpf_get_attach_cookie(ctx);
	struct calls *cs;
	struct call *c;

	if (!wp_traced(id >> 32))
		return 1;
	cs = task_calls(true);
	if (!cs)
		return 1;
	c = call_slot(cs, cookie);
	c->cookie = cookie;
	c->arg0 = c->arg1 = c->arg2 = c->outp = 0;
	c->stack_id = -1;
	c->py = 0;
	read_args(ctx, c, cookie);
	if (capture_stacks) {
		c->stack_id = bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK);
		c->py = wp_py_stack();
	}
	/* Last: the duration should not include our own argument reads. */
	c->ts = bpf_ktime_get_ns();
	return 0;
}

/* The kernel name a successful cuModuleGetFunction/cuLibraryGetKernel was given,
 * read at return: the driver has just compared it, so its page is resident
 * (at program start a name read at entry can come back empty). */
static __always_inline bool cuda_symbol_payload(struct pt_regs *ctx, struct call *c, __u64 pid_tgid)
{
	struct wp_payload_rec *p;
	long n;

	if (CUDA_COOKIE_LAYOUT(c->cookie) != CL_GET_FUNC || !c->arg2 || (__s32)PT_REGS_RC(ctx) != 0)
		return false;
	p = wp_start_payload(pid_tgid, c->ts, WP_PL_SYMBOL, -1);
	if (!p)
		return false;
	n = bpf_probe_read_user_str(p->data, sizeof(p->data), (void *)c->arg2);
	wp_finish_payload(p, n > 0 ? n - 1 : 0);
	return true;
}

static __always_inline int cuda_return(struct pt_regs *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	__u64 cookie = bpf_get_attach_cookie(ctx);
	struct wp_event *e;
	struct calls *cs;
	struct call *c;
	bool named;

	cs = task_calls(false);
	if (!cs)
		return 0;
	c = call_slot(cs, cookie);
	if (!c->ts)
		return 0;
	/* Payload before its event: user space matches them by (tid, ts). */
	named = cuda_symbol_payload(ctx, c, id);
	e = wp_reserve();
	if (!e) {
		c->ts = 0;
		return 0;
	}
	wp_fill_ids(e, CUDA_COOKIE_SOURCE(c->cookie), CUDA_COOKIE_OP(c->cookie), id);
	if (!cs->named) {
		cs->cgroup_id = bpf_get_current_cgroup_id();
		bpf_get_current_comm(e->comm, sizeof(e->comm));
		cs->named = 1;
	} else {
		__builtin_memset(e->comm, 0, sizeof(e->comm));
	}
	e->cgroup_id = cs->cgroup_id;
	e->ts_ns = c->ts;
	e->duration_ns = now - c->ts;
	e->arg0 = c->arg0;
	e->arg1 = c->arg1;
	/* Straight into the record: every user read costs ~100 ns here, wherever it lands. */
	if (c->outp)
		bpf_probe_read_user(&e->arg1, sizeof(e->arg1), (void *)c->outp);
	e->arg2 = c->arg2;
	e->stack_id = c->stack_id;
	e->ret = (__s32)PT_REGS_RC(ctx);
	if (CUDA_COOKIE_PTSZ(c->cookie))
		e->flags |= WP_F_PTSZ;
	if (c->py) {
		e->aux = c->py;
		e->flags |= WP_F_HAS_PYSTACK;
	}
	if (named)
		e->flags |= WP_F_HAS_PAYLOAD;
	c->ts = 0;
	wp_submit_event(e);
	return 0;
}

#endif /* __WP_CUDA_BPF_H */
