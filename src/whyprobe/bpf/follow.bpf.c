// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Targeting, whatever probe families are chosen: a traced process's children
 * are enrolled in `targets` at fork and taken out at exit, and a library a
 * family probes is probed before the process that opens it runs on.
 *
 * Late loads: when a traced process opens (openat) a file whose base name
 * starts with one of `libnames`, it is stopped with SIGSTOP, sent at the
 * syscall's exit so it takes effect before the thread returns to user space,
 * and the thread is put in `held`. User space attaches the probes to the file
 * the fd names, deletes the entry and sends SIGCONT (which also discards a
 * SIGSTOP not yet delivered). A watchdog process that shares `held` continues
 * whatever is still in it when the tracer dies, so no target stays stopped.
 *
 * User space learns of forks, exits, execs and holds from the `notices` ring
 * (woken per record: they are rare). The pid set and `held` stay the truth
 * when a notice is lost.
 *
 * Loaded after every family, so at exit their programs see the process still
 * traced and this one takes it out last (programs on a tracepoint run in
 * attach order). Fork/exit/exec exist as tp_btf and raw_tp; user space
 * autoloads one set. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"
#include "follow.h"

char LICENSE[] SEC("license") = "GPL";

#define SIGSTOP 19
#define PATH_BUF 256

const volatile __u32 nr_libnames = 0;
const volatile struct wp_libname libnames[WP_LIBNAMES] = {};

/* In BTF for tests/unit/test_layout.py. */
struct wp_notice wp_notice_layout = {};
struct wp_held wp_held_layout = {};

__u64 wp_notice_drops = 0;

#define NOTICES_BYTES (1 << 18)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, NOTICES_BYTES);
} notices SEC(".maps");

/* tid -> the library it opened, while its process is stopped. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct wp_held);
} held SEC(".maps");

/* tid -> 1 between the entry and exit of an openat of a wanted file. A plain
 * hash: an LRU may evict an entry before it is full, and a lost entry is a
 * missed hold. Exit always deletes it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} opening SEC(".maps");

struct path_scratch {
	char path[PATH_BUF];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct path_scratch);
} scratch SEC(".maps");

/* A notice with every field written (paths and args empty); the caller submits it. */
static __always_inline struct wp_notice *notice(__u32 kind, __u32 pid, __u32 tid, __u32 ppid, __s32 fd)
{
	struct wp_notice *n = bpf_ringbuf_reserve(&notices, sizeof(*n), 0);
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	if (!n) {
		__sync_fetch_and_add(&wp_notice_drops, 1);
		return NULL;
	}
	n->ts_ns = bpf_ktime_get_ns();
	/* The process's start, so user space never reads /proc per exec for it. */
	n->start_ns = BPF_CORE_READ(task, group_leader, start_time);
	n->kind = kind;
	n->pid = pid;
	n->tid = tid;
	n->ppid = ppid;
	n->fd = fd;
	n->args_len = 0;
	/* At exec, already the new program's (set before the exec tracepoint). */
	bpf_get_current_comm(n->comm, sizeof(n->comm));
	__builtin_memset(n->path, 0, sizeof(n->path));
	__builtin_memset(n->args, 0, sizeof(n->args));
	return n;
}

/* A hold wakes user space at once: a thread is stopped until it is answered. Forks, exits and
 * execs are read on user space's timer (or early, once the ring is half full): a wake-up per
 * notice made an exec storm's notices cost a drain each. */
static __always_inline __u64 notice_flags(__u32 kind)
{
	if (kind == WP_NOTICE_HOLD || bpf_ringbuf_query(&notices, BPF_RB_AVAIL_DATA) > NOTICES_BYTES / 2)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void notify(__u32 kind, __u32 pid, __u32 tid, __u32 ppid, __s32 fd)
{
	struct wp_notice *n = notice(kind, pid, tid, ppid, fd);

	if (n)
		bpf_ringbuf_submit(n, notice_flags(kind));
}

static __always_inline void on_fork(struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	__u32 ctgid = BPF_CORE_READ(child, tgid);

	if (trace_all || ctgid == ptgid || !wp_traced(ptgid))
		return;
	wp_set_traced(ctgid, 1);
	notify(WP_NOTICE_FORK, ctgid, BPF_CORE_READ(child, pid), ptgid, -1);
}

static __always_inline void on_exit(bool group_dead)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (trace_all || !group_dead || !wp_traced(tgid))
		return;
	wp_set_traced(tgid, 0);
	notify(WP_NOTICE_EXIT, tgid, tgid, 0, -1);
}

static __always_inline void on_exec(struct task_struct *task, struct linux_binprm *bprm)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 start, end, len;
	struct wp_notice *n;

	if (!wp_traced(id >> 32))
		return;
	n = notice(WP_NOTICE_EXEC, id >> 32, (__u32)id, BPF_CORE_READ(task, real_parent, tgid), -1);
	if (!n)
		return;
	bpf_probe_read_kernel_str(n->path, sizeof(n->path), BPF_CORE_READ(bprm, filename));
	start = BPF_CORE_READ(task, mm, arg_start);
	end = BPF_CORE_READ(task, mm, arg_end);
	len = end > start ? end - start : 0;
	if (len > sizeof(n->args))
		len = sizeof(n->args);
	if (len && bpf_probe_read_user(n->args, len, (const void *)start) == 0)
		n->args_len = len;
	bpf_ringbuf_submit(n, notice_flags(WP_NOTICE_EXEC));
}

struct match_ctx {
	struct path_scratch *sc;
	long n;
	__u32 base;
	bool found;
};

static long find_base(__u32 i, struct match_ctx *m)
{
	if (i >= m->n || i >= PATH_BUF)
		return 1;
	if (m->sc->path[i] == '/')
		m->base = i + 1;
	return 0;
}

static long match_name(__u32 k, struct match_ctx *m)
{
	__u32 len, j;

	if (k >= WP_LIBNAMES)
		return 1;
	len = libnames[k].len;
	if (!len || len > WP_LIBNAME_LEN || m->base + len >= m->n)
		return 0;
	for (j = 0; j < WP_LIBNAME_LEN && j < len; j++) {
		if (m->sc->path[(m->base + j) & (PATH_BUF - 1)] != libnames[k].name[j])
			return 0;
	}
	m->found = true;
	return 1;
}

/* Does the base name of `upath` start with one of `libnames`? (bpf_loop: each
 * callback is verified once, where open-coded nested loops over a path blow
 * up the verifier's state count.) */
static __always_inline bool wanted(const char *upath)
{
	struct match_ctx m = {};
	__u32 zero = 0;

	m.sc = bpf_map_lookup_elem(&scratch, &zero);
	if (!m.sc)
		return false;
	m.n = bpf_probe_read_user_str(m.sc->path, PATH_BUF, upath);
	if (m.n <= 1)
		return false;
	bpf_loop(PATH_BUF, find_base, &m, 0);
	bpf_loop(nr_libnames, match_name, &m, 0);
	return m.found;
}

SEC("tp/syscalls/sys_enter_openat")
int handle_openat_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	__u8 one = 1;

	/* The tracer opens these files itself to read their symbols: stopping it would be for good. */
	if (!nr_libnames || (id >> 32) == tracer_tgid || !wp_traced(id >> 32))
		return 0;
	if (wanted((const char *)ctx->args[1]))
		bpf_map_update_elem(&opening, &tid, &one, BPF_ANY);
	return 0;
}

SEC("tp/syscalls/sys_exit_openat")
int handle_openat_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct wp_held h = {};

	/* Every openat of the host passes here: the pid filter first, the hash only for traced ones. */
	if (!nr_libnames || !wp_traced(id >> 32) || !bpf_map_lookup_elem(&opening, &tid))
		return 0;
	bpf_map_delete_elem(&opening, &tid);
	if (ctx->ret < 0)
		return 0;
	h.ts_ns = bpf_ktime_get_ns();
	h.pid = id >> 32;
	h.fd = ctx->ret;
	/* No room to remember the hold: better a late attach than a process nobody continues. */
	if (bpf_map_update_elem(&held, &tid, &h, BPF_ANY))
		return 0;
	bpf_send_signal(SIGSTOP);
	notify(WP_NOTICE_HOLD, h.pid, tid, 0, h.fd);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle_fork, struct task_struct *parent, struct task_struct *child)
{
	on_fork(parent, child);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_exit, struct task_struct *p, bool group_dead)
{
	on_exit(group_dead);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	on_exec(p, bprm);
	return 0;
}

SEC("raw_tp/sched_process_fork")
int BPF_PROG(handle_fork_raw, struct task_struct *parent, struct task_struct *child)
{
	on_fork(parent, child);
	return 0;
}

SEC("raw_tp/sched_process_exit")
int BPF_PROG(handle_exit_raw, struct task_struct *p, bool group_dead)
{
	on_exit(group_dead);
	return 0;
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(handle_exec_raw, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	on_exec(p, bprm);
	return 0;
}
