/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* CPython frame walk from a uprobe (FACTS-cuda-cpython.md Part 2), usable by
 * any object: include after common.bpf.h and call wp_py_stack() at entry.
 *
 * User space (probes/stacks.py) finds each target's interpreter, its version
 * and the address of _PyRuntime, and stores a struct py_proc per tgid in
 * `py_procs`. The walk finds the current thread's PyThreadState in the
 * interpreter's thread list (native_thread_id == tid on 3.11+, thread_id ==
 * fsbase on 3.10; ctypes calls release the GIL, so "the GIL holder" would be
 * wrong), then follows the frame chain, innermost first, recording
 * (code object, instruction) pairs: instruction = f_lasti on 3.10, the
 * prev_instr/instr_ptr address on 3.11+. User space reads names and decodes
 * the line table. The frames are stored once per distinct stack in
 * `py_stacks` under a hash of their content; the caller puts that id in
 * wp_event.aux and sets WP_F_HAS_PYSTACK. */
#ifndef __WP_PYSTACKS_BPF_H
#define __WP_PYSTACKS_BPF_H

#define PY_MAX_FRAMES 32
#define PY_MAX_THREADS 64

struct py_proc {
	__u64 runtime;        /* address of _PyRuntime in the target */
	__u32 version;        /* 310, 311, 312, 313 */
	__u32 interp_head;    /* _PyRuntime.interpreters.head */
	__u32 threads_head;   /* PyInterpreterState -> first PyThreadState */
	__u32 ts_next;
	__u32 ts_tid;         /* native_thread_id (3.11+) or thread_id (3.10) */
	__u32 ts_frame;       /* frame (3.10), cframe (3.11/3.12), current_frame (3.13) */
	__s32 cframe_current; /* offset of current_frame in _PyCFrame, -1 = no cframe */
	__u32 frame_code;
	__u32 frame_back;
	__u32 frame_instr;
	__u32 frame_owner;    /* 0 = no owner field (3.10) */
	__u32 pad;
};

struct py_frame {
	__u64 code;
	__u64 instr;
};

struct py_stack {
	__u32 n;
	__u32 version;
	struct py_frame frames[PY_MAX_FRAMES];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct py_proc);
} py_procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct py_stack);
} py_stacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct py_stack);
} py_scratch SEC(".maps");

static __always_inline __u64 py_read_ptr(__u64 addr)
{
	__u64 v = 0;

	bpf_probe_read_user(&v, sizeof(v), (void *)addr);
	return v;
}

struct py_walk {
	struct py_proc *cfg;
	struct py_stack *st;
	__u64 want;  /* thread id to find */
	__u64 ptr;   /* current thread state, then current frame */
	__u64 hash;
	__u32 n;
};

/* bpf_loop callbacks: verified once, however many iterations run. */
static long py_find_thread(__u32 i, struct py_walk *w)
{
	__u64 id;

	if (!w->ptr)
		return 1;
	id = py_read_ptr(w->ptr + w->cfg->ts_tid);
	if (w->cfg->version != 310)
		id &= 0xffffffffULL; /* native_thread_id: an unsigned long holding a pid_t */
	if (id == w->want)
		return 1;
	w->ptr = py_read_ptr(w->ptr + w->cfg->ts_next);
	return 0;
}

static long py_walk_frame(__u32 i, struct py_walk *w)
{
	struct py_proc *cfg = w->cfg;
	__u64 frame = w->ptr, code, instr = 0;
	__s32 lasti = 0;
	__u8 owner = 0;
	__u32 k;

	if (!frame || w->n >= PY_MAX_FRAMES)
		return 1;
	code = py_read_ptr(frame + cfg->frame_code);
	if (cfg->frame_owner)
		bpf_probe_read_user(&owner, 1, (void *)(frame + cfg->frame_owner));
	if (cfg->version == 310) {
		bpf_probe_read_user(&lasti, sizeof(lasti), (void *)(frame + cfg->frame_instr));
		instr = (__u64)(__s64)lasti;
	} else {
		instr = py_read_ptr(frame + cfg->frame_instr);
	}
	/* owner 3 = FRAME_OWNED_BY_CSTACK: an entry shim with no code of its own. */
	if (owner != 3 && code) {
		k = w->n & (PY_MAX_FRAMES - 1);
		w->st->frames[k].code = code;
		w->st->frames[k].instr = instr;
		w->hash = (w->hash ^ code) * 0x100000001b3ULL;
		w->hash = (w->hash ^ instr) * 0x100000001b3ULL;
		w->n++;
	}
	w->ptr = py_read_ptr(frame + cfg->frame_back);
	return 0;
}

/* Walk the current thread's Python stack; 0 when the process is not
 * configured, the thread runs no Python, or nothing could be read. */
static __always_inline __u64 wp_py_stack(void)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32, zero = 0;
	struct py_walk w = {};
	__u64 interp;

	w.cfg = bpf_map_lookup_elem(&py_procs, &tgid);
	if (!w.cfg)
		return 0;
	w.st = bpf_map_lookup_elem(&py_scratch, &zero);
	if (!w.st)
		return 0;
	if (w.cfg->version == 310) {
		struct task_struct *task = bpf_get_current_task_btf();

		w.want = BPF_CORE_READ(task, thread.fsbase); /* thread_id = pthread_self() */
	} else {
		w.want = (__u32)pid_tgid;
	}
	interp = py_read_ptr(w.cfg->runtime + w.cfg->interp_head);
	if (!interp)
		return 0;
	w.ptr = py_read_ptr(interp + w.cfg->threads_head);
	bpf_loop(PY_MAX_THREADS, py_find_thread, &w, 0);
	if (!w.ptr)
		return 0;
	w.ptr = py_read_ptr(w.ptr + w.cfg->ts_frame);
	if (w.cfg->cframe_current >= 0 && w.ptr)
		w.ptr = py_read_ptr(w.ptr + w.cfg->cframe_current);
	w.hash = 0xcbf29ce484222325ULL;
	bpf_loop(PY_MAX_FRAMES * 2, py_walk_frame, &w, 0);
	if (!w.n)
		return 0;
	w.st->n = w.n;
	w.st->version = w.cfg->version;
	w.hash |= 1; /* never 0 */
	bpf_map_update_elem(&py_stacks, &w.hash, w.st, BPF_ANY);
	return w.hash;
}

#endif /* __WP_PYSTACKS_BPF_H */
