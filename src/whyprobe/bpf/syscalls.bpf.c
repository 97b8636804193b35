// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Syscalls of the traced set via raw_syscalls sys_enter/sys_exit.
 *
 * Every syscall is aggregated in the kernel: exact count, errors, total and
 * max ns and a log2(ns) histogram per (pid, tid, nr) in `stats`, which user
 * space flushes into syscall_stats. Individual SYSCALL records (op = nr) are
 * emitted only for the rare, telling ones: open/openat/openat2, connect,
 * accept/accept4, bind, execve/execveat, clone/clone3/fork/vfork, socket,
 * executable file mmaps, unlink/unlinkat and rename/renameat/renameat2.
 * Paths and socket addresses follow as payload records with the same
 * (tid, ts_ns) (WP_F_HAS_PAYLOAD). exit/exit_group never return: counted at
 * entry with no latency.
 *
 * With `emit_all` (whyprobe footprint) every other syscall is emitted too, as a
 * plain record (ts = entry, duration, ret, op = nr), so a tool call's window
 * can count and time each syscall exactly. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"
#include "syscall_nrs.h"

char LICENSE[] SEC("license") = "GPL";


#define PROT_EXEC 4
#define HIST_SLOTS 32
#define STR_MAX 512
#define SOCKADDR_MAX 128

/* 0 = also emit events for mmaps that are not PROT_EXEC (data files). */
const volatile __u32 mmap_exec_only = 1;
/* 1 = one record for every syscall, not only the telling ones. */
const volatile __u32 emit_all = 0;

struct start {
	__u64 ts;
	__u64 nr;
	__u64 args[6];
};

struct stat_key {
	__u32 pid;
	__u32 tid;
	__u32 nr;
	__u32 pad;
};

struct stat_val {
	__u64 count;
	__u64 errors;
	__u64 total_ns;
	__u64 max_ns;
	__u64 hist[HIST_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct start);
} starts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct stat_key);
	__type(value, struct stat_val);
} stats SEC(".maps");

/* Too large for the BPF stack: one scratch value per CPU to seed new keys. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stat_val);
} zero SEC(".maps");

static __always_inline __u32 log2_slot(__u64 v)
{
	__u32 r = 0, shift;

	shift = (v > 0xffffffffULL) << 5; v >>= shift; r |= shift;
	shift = (v > 0xffff) << 4; v >>= shift; r |= shift;
	shift = (v > 0xff) << 3; v >>= shift; r |= shift;
	shift = (v > 0xf) << 2; v >>= shift; r |= shift;
	shift = (v > 0x3) << 1; v >>= shift; r |= shift;
	r |= (v >> 1);
	return r < HIST_SLOTS ? r : HIST_SLOTS - 1;
}

static __always_inline void account(__u64 id, __u32 nr, __u64 dur, __s64 ret, bool timed)
{
	struct stat_key k = { .pid = id >> 32, .tid = (__u32)id, .nr = nr };
	struct stat_val *v;
	__u32 zkey = 0;

	v = bpf_map_lookup_elem(&stats, &k);
	if (!v) {
		struct stat_val *z = bpf_map_lookup_elem(&zero, &zkey);

		if (!z)
			return;
		bpf_map_update_elem(&stats, &k, z, BPF_NOEXIST);
		v = bpf_map_lookup_elem(&stats, &k);
		if (!v)
			return;
	}
	/* One thread per key: no other CPU updates it concurrently. */
	v->count++;
	if (!timed)
		return;
	if (ret < 0 && ret > -4096)
		v->errors++;
	v->total_ns += dur;
	if (dur > v->max_ns)
		v->max_ns = dur;
	v->hist[log2_slot(dur)]++;
}

static __always_inline bool wants_event(__u32 nr, __u64 *args)
{
	switch (nr) {
	case NR_OPEN: case NR_OPENAT: case NR_OPENAT2:
	case NR_CONNECT: case NR_ACCEPT: case NR_ACCEPT4: case NR_BIND:
	case NR_EXECVE: case NR_EXECVEAT:
	case NR_CLONE: case NR_CLONE3: case NR_FORK: case NR_VFORK:
	case NR_SOCKET:
	case NR_UNLINK: case NR_UNLINKAT: case NR_RENAME: case NR_RENAMEAT: case NR_RENAMEAT2:
		return true;
	case NR_MMAP:
		return (__s32)args[4] >= 0 && (!mmap_exec_only || (args[2] & PROT_EXEC));
	}
	return false;
}

/* One user string, or two as "first\0second" (rename). Each emit_* returns
 * whether it sent a payload (the event then says WP_F_HAS_PAYLOAD). */
static __always_inline bool emit_paths(__u64 id, __u64 ts, const char *first, const char *second)
{
	struct wp_payload_rec *p = wp_start_payload(id, ts, WP_PL_PATH, -1);
	long n, m;

	if (!p)
		return false;
	n = bpf_probe_read_user_str(p->data, STR_MAX - 1, first);
	if (n < 0)
		n = 0;
	if (second) {
		n &= STR_MAX - 1;
		m = bpf_probe_read_user_str(p->data + n, STR_MAX, second);
		n += m > 0 ? m : 0;
	}
	wp_finish_payload(p, n > 0 ? n - 1 : 0); /* without the last NUL */
	return true;
}

static __always_inline bool emit_sockaddr(__u64 id, __u64 ts, __s32 fd, const void *addr, __u64 len)
{
	struct wp_payload_rec *p;

	if (!addr || !len)
		return false;
	if (len > SOCKADDR_MAX)
		len = SOCKADDR_MAX;
	p = wp_start_payload(id, ts, WP_PL_SOCKADDR, fd);
	if (!p)
		return false;
	if (bpf_probe_read_user(p->data, len & (SOCKADDR_MAX * 2 - 1), addr))
		len = 0;
	wp_finish_payload(p, len);
	return true;
}

/* Name of the file behind fd (its last path component; no bpf_d_path here). */
static __always_inline bool emit_fd_name(__u64 id, __u64 ts, __s32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file **fds = BPF_CORE_READ(task, files, fdt, fd);
	struct file *f = NULL;
	const unsigned char *name;
	struct wp_payload_rec *p;
	long n;

	if (fd < 0 || fd >= BPF_CORE_READ(task, files, fdt, max_fds))
		return false;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	if (!f)
		return false;
	name = BPF_CORE_READ(f, f_path.dentry, d_name.name);
	p = wp_start_payload(id, ts, WP_PL_PATH, fd);
	if (!p)
		return false;
	n = bpf_probe_read_kernel_str(p->data, STR_MAX, name);
	wp_finish_payload(p, n > 0 ? n - 1 : 0);
	return true;
}

static __always_inline void emit_plain(__u64 id, __u32 nr, __u64 ts, __u64 dur, __s64 ret)
{
	struct wp_event *e = wp_reserve();

	if (!e)
		return;
	wp_fill(e, WP_SRC_SYSCALL, nr, id);
	e->ts_ns = ts;
	e->duration_ns = dur;
	e->ret = ret;
	wp_submit_event(e);
}

static __always_inline void emit_event(__u64 id, struct start *s, __u64 now, __s64 ret)
{
	__u32 nr = s->nr;
	__u64 *a = s->args;
	struct wp_event *e = wp_reserve();
	__u64 flags = 0;
	__u32 alen = 0;
	bool pl = false;

	if (!e)
		return;
	wp_fill(e, WP_SRC_SYSCALL, nr, id);
	e->ts_ns = s->ts;
	e->duration_ns = now - s->ts;
	e->ret = ret;
	switch (nr) {
	case NR_OPEN:
		e->arg1 = a[1];
		pl = emit_paths(id, s->ts, (const char *)a[0], NULL);
		break;
	case NR_OPENAT:
		e->arg0 = (__s32)a[0];
		e->arg1 = a[2];
		pl = emit_paths(id, s->ts, (const char *)a[1], NULL);
		break;
	case NR_OPENAT2:
		e->arg0 = (__s32)a[0];
		bpf_probe_read_user(&flags, sizeof(flags), (void *)a[2]);
		e->arg1 = flags;
		pl = emit_paths(id, s->ts, (const char *)a[1], NULL);
		break;
	case NR_CONNECT:
	case NR_BIND:
		e->arg0 = (__s32)a[0];
		pl = emit_sockaddr(id, s->ts, a[0], (const void *)a[1], a[2]);
		break;
	case NR_ACCEPT:
	case NR_ACCEPT4:
		e->arg0 = (__s32)a[0];
		if (ret >= 0 && a[1] && a[2]) {
			bpf_probe_read_user(&alen, sizeof(alen), (void *)a[2]);
			pl = emit_sockaddr(id, s->ts, ret, (const void *)a[1], alen);
		}
		break;
	case NR_CLONE:
		e->arg0 = a[0];
		break;
	case NR_CLONE3:
		bpf_probe_read_user(&flags, sizeof(flags), (void *)a[0]);
		e->arg0 = flags;
		break;
	case NR_SOCKET:
		e->arg0 = a[0];
		e->arg1 = a[1];
		e->arg2 = a[2];
		break;
	case NR_MMAP:
		e->arg0 = a[1];
		e->arg1 = a[2];
		e->arg2 = (__s32)a[4];
		pl = emit_fd_name(id, s->ts, a[4]);
		break;
	case NR_UNLINK:
		pl = emit_paths(id, s->ts, (const char *)a[0], NULL);
		break;
	case NR_UNLINKAT:
		pl = emit_paths(id, s->ts, (const char *)a[1], NULL);
		break;
	case NR_RENAME:
		pl = emit_paths(id, s->ts, (const char *)a[0], (const char *)a[1]);
		break;
	case NR_RENAMEAT:
	case NR_RENAMEAT2:
		pl = emit_paths(id, s->ts, (const char *)a[1], (const char *)a[3]);
		break;
	case NR_EXECVE:
	case NR_EXECVEAT:
		pl = true; /* the path was emitted at entry: the old image is gone by now */
		break;
	}
	if (pl)
		e->flags |= WP_F_HAS_PAYLOAD;
	wp_submit_event(e);
}

SEC("tp/raw_syscalls/sys_enter")
int handle_sys_enter(struct trace_event_raw_sys_enter *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct start s = {};
	__u32 nr;

	if (!wp_traced(id >> 32))
		return 0;
	nr = ctx->id;
	if (nr == NR_EXIT || nr == NR_EXIT_GROUP) {
		account(id, nr, 0, 0, false);
		if (emit_all)
			emit_plain(id, nr, bpf_ktime_get_ns(), 0, 0);
		return 0;
	}
	s.nr = nr;
	s.args[0] = ctx->args[0];
	s.args[1] = ctx->args[1];
	s.args[2] = ctx->args[2];
	s.args[3] = ctx->args[3];
	s.args[4] = ctx->args[4];
	s.args[5] = ctx->args[5];
	s.ts = bpf_ktime_get_ns();
	if (nr == NR_EXECVE)
		emit_paths(id, s.ts, (const char *)s.args[0], NULL);
	else if (nr == NR_EXECVEAT)
		emit_paths(id, s.ts, (const char *)s.args[1], NULL);
	bpf_map_update_elem(&starts, &id, &s, BPF_ANY);
	return 0;
}

SEC("tp/raw_syscalls/sys_exit")
int handle_sys_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	struct start *s;
	__s64 ret = ctx->ret;

	s = bpf_map_lookup_elem(&starts, &id);
	if (!s)
		return 0;
	account(id, s->nr, now - s->ts, ret, true);
	if (wants_event(s->nr, s->args))
		emit_event(id, s, now, ret);
	else if (emit_all)
		emit_plain(id, s->nr, s->ts, now - s->ts, ret);
	bpf_map_delete_elem(&starts, &id);
	return 0;
}
