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
 * wp_event.aux and sets WP_F_HAS_PYSTACK.
 *
 * The first time a process shows a code object, its name, file, first line
 * and line table are copied into `py_codes` too: user space reads code
 * objects from the live process, but the last calls of a short program are
 * drained after it exited (#14.4), and then only this copy names them.
 * Only compact ASCII names are copied (others are read from the live process). */
#ifndef __WP_PYSTACKS_BPF_H
#define __WP_PYSTACKS_BPF_H

#define PY_MAX_FRAMES 32
#define PY_MAX_THREADS 64
#define PY_NAME_LEN 64
#define PY_FILE_LEN 192 /* the tail of a longer path: it ends in the file's name */
#define PY_LINETABLE_LEN 512

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
	__u32 co_filename;    /* PyCodeObject fields */
	__u32 co_name;        /* co_qualname on 3.11+ */
	__u32 co_firstlineno;
	__u32 co_linetable;
	__u32 str_ascii;      /* data of a compact ASCII str */
	__u32 pad2;
};

struct py_code_key {
	__u64 code;
	__u32 tgid;
	__u32 pad;
};

struct py_code {
	__s32 firstlineno;
	__u32 linetable_len;  /* bytes copied into linetable */
	__u16 name_len;       /* 0: not a compact ASCII str (or unreadable) */
	__u16 file_len;
	__u32 pad;
	char name[PY_NAME_LEN];
	char file[PY_FILE_LEN];
	__u8 linetable[PY_LINETABLE_LEN];
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

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct py_code_key);
	__type(value, struct py_code);
} py_codes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct py_code);
} py_code_scratch SEC(".maps");

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
	__u32 tgid;
};

/* Copy a compact ASCII str's bytes (the last `cap` when longer); returns the length copied. */
static __always_inline __u16 py_read_ascii(struct py_proc *cfg, __u64 obj, char *buf, __u32 cap)
{
	__u8 state = 0;
	__s64 len = 0;
	__u64 skip = 0;

	if (!obj)
		return 0;
	bpf_probe_read_user(&state, 1, (void *)(obj + 32));
	if (!(state & 0x40) || !(state & 0x20)) /* ascii, compact */
		return 0;
	bpf_probe_read_user(&len, sizeof(len), (void *)(obj + 16));
	if (len <= 0)
		return 0;
	if (len > cap) {
		skip = len - cap;
		len = cap;
	}
	len &= 0x3ff; /* bound for the verifier: cap <= PY_FILE_LEN < 1024 */
	if (len > cap || bpf_probe_read_user(buf, len, (void *)(obj + cfg->str_ascii + skip)))
		return 0;
	return len;
}

/* First sight of `code` in this process: keep what names it (see the top of this file). */
static __always_inline void py_save_code(struct py_walk *w, __u64 code)
{
	struct py_code_key key = {.code = code, .tgid = w->tgid};
	struct py_proc *cfg = w->cfg;
	struct py_code *pc;
	__u64 lt;
	__s64 size = 0;
	__u32 zero = 0;

	if (bpf_map_lookup_elem(&py_codes, &key))
		return;
	pc = bpf_map_lookup_elem(&py_code_scratch, &zero);
	if (!pc)
		return;
	pc->firstlineno = 0;
	pc->pad = 0;
	bpf_probe_read_user(&pc->firstlineno, sizeof(pc->firstlineno), (void *)(code + cfg->co_firstlineno));
	pc->name_len = py_read_ascii(cfg, py_read_ptr(code + cfg->co_name), pc->name, PY_NAME_LEN);
	pc->file_len = py_read_ascii(cfg, py_read_ptr(code + cfg->co_filename), pc->file, PY_FILE_LEN);
	pc->linetable_len = 0;
	lt = py_read_ptr(code + cfg->co_linetable);
	if (lt)
		bpf_probe_read_user(&size, sizeof(size), (void *)(lt + 16)); /* ob_size */
	if (size > 0) {
		if (size > PY_LINETABLE_LEN)
			size = PY_LINETABLE_LEN;
		size &= 0x3ff;
		if (size <= PY_LINETABLE_LEN && !bpf_probe_read_user(pc->linetable, size, (void *)(lt + 32)))
			pc->linetable_len = size;
	}
	bpf_map_update_elem(&py_codes, &key, pc, BPF_NOEXIST);
}

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
		py_save_code(w, code);
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
	w.tgid = tgid;
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
