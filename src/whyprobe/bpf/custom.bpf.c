// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* User-configured probes (config probes.uprobes / probes.tracepoints), source
 * WP_SRC_CUSTOM.
 *
 * Uprobes: one entry and one return program serve every configured symbol,
 * attached with one uprobe_multi link per library per direction. The cookie
 * carries the op (index in the config) and the mode: entry-only probes emit
 * at entry, return-only probes at return, `both` probes push {ts, args} on a
 * small per-(thread, op) stack at entry and emit one event at return, so
 * recursive calls are each recorded (up to CUSTOM_DEPTH nested frames; deeper
 * calls are counted so the frames stay matched, but not emitted).
 *
 * Tracepoints: one generic program attached once to each distinct configured
 * tracepoint (the kernel refuses the same program twice on one tracepoint).
 * Config entries naming the same tracepoint occupy consecutive slots of
 * `tp_specs`; the cookie says which (first slot | count << 16). Each slot
 * holds one entry's op, compiled filter and argument layout (filled by user
 * space from the tracepoint's format file). A filter, an OR of up to
 * CUSTOM_MAX_OR groups of up to CUSTOM_MAX_AND comparisons, is evaluated
 * here, before any ring space is reserved; each entry that passes emits its
 * own event. A string comparison (`rwbs ~ '.*W.*'`) runs a DFA compiled in
 * user space (strmatch.py) over the field's bytes: one table lookup per byte,
 * up to the first NUL or CUSTOM_STR_MAX bytes, no string formatting here. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* Keep in sync with probes/custom.py. */
#define CUSTOM_OP_MASK 0xffffULL
#define CUSTOM_EMIT_AT_ENTRY (1ULL << 16) /* attach: entry */
#define CUSTOM_PAIRED (1ULL << 17)        /* attach: both */
#define CUSTOM_DEPTH 8
#define CUSTOM_MAX_OR 4
#define CUSTOM_MAX_AND 4
#define CUSTOM_NARGS 3
#define CUSTOM_MAX_SAME 8 /* config entries on one tracepoint */
#define CUSTOM_DFA_STATES 32
#define CUSTOM_DFA_CLASSES 16
#define CUSTOM_STR_MAX 64

enum custom_cmp {
	CMP_EQ = 1,
	CMP_NE = 2,
	CMP_LT = 3,
	CMP_LE = 4,
	CMP_GT = 5,
	CMP_GE = 6,
	CMP_AND = 7,	 /* (field & value) != 0 */
	CMP_MATCH = 8,	 /* string field matches pattern `value` (index in tp_patterns) */
	CMP_NOMATCH = 9, /* ... does not match */
};

enum field_kind {
	FIELD_UNSIGNED = 0,
	FIELD_SIGNED = 1,
	FIELD_CHARS = 2,    /* char name[size], in the record */
	FIELD_DATA_LOC = 3, /* __data_loc char[]: u32 (length << 16 | offset) */
};

/* A field of a tracepoint record: size 0 = unused slot. */
struct tp_field {
	__u16 offset;
	__u8 size;
	__u8 kind; /* enum field_kind */
};

struct tp_cond {
	struct tp_field field;
	__u32 cmp; /* enum custom_cmp */
	__u64 value;
};

struct tp_spec {
	__u32 op;
	__u32 n_or; /* 0: no filter, every hit is recorded */
	__u32 n_and[CUSTOM_MAX_OR];
	struct tp_cond cond[CUSTOM_MAX_OR][CUSTOM_MAX_AND];
	struct tp_field args[CUSTOM_NARGS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* resized to the number of configured tracepoints */
	__type(key, __u32);
	__type(value, struct tp_spec);
} tp_specs SEC(".maps");

/* A full-match DFA: byte -> class, (state, class) -> state, accepting states. */
struct tp_pattern {
	__u8 classes[256];
	__u8 next[CUSTOM_DFA_STATES * CUSTOM_DFA_CLASSES];
	__u32 accept; /* bit s: state s accepts */
	__u32 start;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1); /* resized to the number of patterns in the filters */
	__type(key, __u32);
	__type(value, struct tp_pattern);
} tp_patterns SEC(".maps");

struct frame {
	__u64 ts;
	__u64 arg[CUSTOM_NARGS];
	__s64 stack_id;
};

struct inflight {
	__u32 depth; /* may exceed CUSTOM_DEPTH: only the outer frames are stored */
	__u32 pad;
	struct frame f[CUSTOM_DEPTH];
};

struct inflight_key {
	__u64 pid_tgid;
	__u64 op;
};

/* LRU: a thread that exits mid-call leaves its entry behind; LRU evicts it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct inflight_key);
	__type(value, struct inflight);
} inflight SEC(".maps");

static const struct inflight empty_inflight = {};

static __always_inline __s32 user_stack(void *ctx)
{
	return capture_stacks ? bpf_get_stackid(ctx, &stacks, BPF_F_USER_STACK) : -1;
}

static __always_inline struct wp_event *custom_event(__u64 cookie, __u64 pid_tgid)
{
	struct wp_event *e = wp_reserve();

	if (e)
		wp_fill(e, WP_SRC_CUSTOM, cookie & CUSTOM_OP_MASK, pid_tgid);
	return e;
}

SEC("uprobe")
int handle_custom_entry(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 cookie = bpf_get_attach_cookie(ctx);
	struct inflight_key key = {.pid_tgid = id, .op = cookie & CUSTOM_OP_MASK};
	struct inflight *v;
	struct wp_event *e;
	struct frame *f;
	__u32 d;

	if (!wp_traced(id >> 32))
		return 0;
	if (cookie & CUSTOM_EMIT_AT_ENTRY) {
		e = custom_event(cookie, id);
		if (!e)
			return 0;
		e->ts_ns = bpf_ktime_get_ns();
		e->arg0 = PT_REGS_PARM1(ctx);
		e->arg1 = PT_REGS_PARM2(ctx);
		e->arg2 = PT_REGS_PARM3(ctx);
		e->stack_id = user_stack(ctx);
		wp_submit_event(e);
		return 0;
	}
	v = bpf_map_lookup_elem(&inflight, &key);
	if (!v) {
		bpf_map_update_elem(&inflight, &key, &empty_inflight, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&inflight, &key);
		if (!v)
			return 0;
	}
	d = v->depth;
	v->depth = d + 1;
	if (d >= CUSTOM_DEPTH)
		return 0;
	/* The mask is a no-op after the check; it keeps the bound visible to the verifier. */
	f = &v->f[d & (CUSTOM_DEPTH - 1)];
	f->arg[0] = PT_REGS_PARM1(ctx);
	f->arg[1] = PT_REGS_PARM2(ctx);
	f->arg[2] = PT_REGS_PARM3(ctx);
	f->stack_id = user_stack(ctx);
	/* Last: the duration should not include our own work. */
	f->ts = bpf_ktime_get_ns();
	return 0;
}

SEC("uretprobe")
int handle_custom_return(struct pt_regs *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	__u64 cookie = bpf_get_attach_cookie(ctx);
	struct inflight_key key = {.pid_tgid = id, .op = cookie & CUSTOM_OP_MASK};
	struct inflight *v;
	struct wp_event *e;
	struct frame *f;
	__u32 d;

	if (!(cookie & CUSTOM_PAIRED)) {
		if (!wp_traced(id >> 32))
			return 0;
		e = custom_event(cookie, id);
		if (!e)
			return 0;
		e->ts_ns = now;
		e->ret = PT_REGS_RC(ctx);
		e->stack_id = user_stack(ctx);
		wp_submit_event(e);
		return 0;
	}
	/* No entry seen (untraced thread, or attached mid-call): nothing to pair. */
	v = bpf_map_lookup_elem(&inflight, &key);
	if (!v || !v->depth)
		return 0;
	d = v->depth - 1;
	v->depth = d;
	if (d < CUSTOM_DEPTH) {
		f = &v->f[d & (CUSTOM_DEPTH - 1)];
		e = custom_event(cookie, id);
		if (e) {
			e->ts_ns = f->ts;
			e->duration_ns = now - f->ts;
			e->arg0 = f->arg[0];
			e->arg1 = f->arg[1];
			e->arg2 = f->arg[2];
			e->stack_id = f->stack_id;
			e->ret = PT_REGS_RC(ctx);
			wp_submit_event(e);
		}
	}
	if (!d)
		bpf_map_delete_elem(&inflight, &key);
	return 0;
}

/* A field of the raw tracepoint record, sign- or zero-extended to 64 bits. */
static __always_inline __u64 read_field(void *ctx, const struct tp_field *f)
{
	__u64 at = (__u64)ctx + f->offset;

	switch (f->size) {
	case 1: {
		__u8 v = 0;

		bpf_probe_read_kernel(&v, sizeof(v), (void *)at);
		return f->kind == FIELD_SIGNED ? (__u64)(__s64)(__s8)v : v;
	}
	case 2: {
		__u16 v = 0;

		bpf_probe_read_kernel(&v, sizeof(v), (void *)at);
		return f->kind == FIELD_SIGNED ? (__u64)(__s64)(__s16)v : v;
	}
	case 4: {
		__u32 v = 0;

		bpf_probe_read_kernel(&v, sizeof(v), (void *)at);
		return f->kind == FIELD_SIGNED ? (__u64)(__s64)(__s32)v : v;
	}
	case 8: {
		__u64 v = 0;

		bpf_probe_read_kernel(&v, sizeof(v), (void *)at);
		return v;
	}
	default:
		return 0;
	}
}

static __always_inline bool compare(__u64 x, const struct tp_cond *c)
{
	__u64 y = c->value;
	bool s = c->field.kind == FIELD_SIGNED;

	switch (c->cmp) {
	case CMP_EQ:
		return x == y;
	case CMP_NE:
		return x != y;
	case CMP_LT:
		return s ? (__s64)x < (__s64)y : x < y;
	case CMP_LE:
		return s ? (__s64)x <= (__s64)y : x <= y;
	case CMP_GT:
		return s ? (__s64)x > (__s64)y : x > y;
	case CMP_GE:
		return s ? (__s64)x >= (__s64)y : x >= y;
	case CMP_AND:
		return (x & y) != 0;
	default:
		return false;
	}
}

/* Does the string field match pattern `idx` in full? A subprogram, verified once (not per
 * inlined call site); the record comes as an address, as bpf_probe_read_kernel reads it. */
static __noinline bool matches(__u64 record, __u32 offset, __u32 size, __u32 kind, __u32 idx)
{
	char buf[CUSTOM_STR_MAX] = {};
	struct tp_pattern *p = bpf_map_lookup_elem(&tp_patterns, &idx);
	__u32 state, len = size;
	__u64 at = record + (offset & 0xffff);

	if (!p)
		return false;
	if (kind == FIELD_DATA_LOC) {
		__u32 loc = 0;

		bpf_probe_read_kernel(&loc, sizeof(loc), (void *)at);
		at = record + (loc & 0xffff);
		len = loc >> 16;
	}
	state = p->start;
	if (len > CUSTOM_STR_MAX)
		len = CUSTOM_STR_MAX;
	if (!len)
		return (p->accept >> (state & (CUSTOM_DFA_STATES - 1))) & 1;
	/* The same 1..CUSTOM_STR_MAX, in a form whose bound the verifier sees on any register copy. */
	if (bpf_probe_read_kernel(buf, ((len - 1) & (CUSTOM_STR_MAX - 1)) + 1, (void *)at))
		return false;
	for (__u32 i = 0; i < CUSTOM_STR_MAX; i++) {
		__u8 c;

		if (i >= len)
			break;
		c = buf[i];
		if (!c)
			break;
		state = p->next[(state & (CUSTOM_DFA_STATES - 1)) * CUSTOM_DFA_CLASSES + (p->classes[c] & (CUSTOM_DFA_CLASSES - 1))];
	}
	return (p->accept >> (state & (CUSTOM_DFA_STATES - 1))) & 1;
}

static __always_inline bool holds(void *ctx, const struct tp_cond *c)
{
	if (c->cmp == CMP_MATCH || c->cmp == CMP_NOMATCH)
		return matches((__u64)ctx, c->field.offset, c->field.size, c->field.kind, c->value) == (c->cmp == CMP_MATCH);
	return compare(read_field(ctx, &c->field), c);
}

static __always_inline bool passes(void *ctx, const struct tp_spec *spec)
{
	if (!spec->n_or)
		return true;
	for (int i = 0; i < CUSTOM_MAX_OR; i++) {
		bool all = true;

		if (i >= spec->n_or)
			break;
		for (int j = 0; j < CUSTOM_MAX_AND; j++) {
			if (j >= spec->n_and[i])
				break;
			if (!holds(ctx, &spec->cond[i][j])) {
				all = false;
				break;
			}
		}
		if (all)
			return true;
	}
	return false;
}

SEC("tp")
int handle_custom_tp(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u32 first = cookie & 0xffff, count = (cookie >> 16) & 0xff;
	struct tp_spec *spec;
	struct wp_event *e;

	if (!wp_traced(id >> 32))
		return 0;
	for (__u32 k = 0; k < CUSTOM_MAX_SAME; k++) {
		__u32 slot = first + k;

		if (k >= count)
			break;
		spec = bpf_map_lookup_elem(&tp_specs, &slot);
		if (!spec || !passes(ctx, spec))
			continue;
		e = custom_event(spec->op, id);
		if (!e)
			return 0;
		e->ts_ns = bpf_ktime_get_ns();
		e->arg0 = read_field(ctx, &spec->args[0]);
		e->arg1 = read_field(ctx, &spec->args[1]);
		e->arg2 = read_field(ctx, &spec->args[2]);
		e->stack_id = user_stack(ctx);
		wp_submit_event(e);
	}
	return 0;
}
