/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Maps, config and helpers shared by every whyprobe BPF object.
 * Each *.bpf.c includes this; the loader (kernel/loader.py) loads the objects
 * one after another and makes all of them share the first one's `events`,
 * `payloads`, `targets` and `stacks` maps (bpf_map__reuse_fd), so one pid
 * filter and one ring serve every probe family. */
#ifndef __WP_COMMON_BPF_H
#define __WP_COMMON_BPF_H

#include "whyprobe.h"

/* Config (rodata; 0 = off), set by the loader before load. */
const volatile __u32 trace_all = 0;          /* 1: no pid filter */
const volatile __u32 tracer_tgid = 0;        /* whyprobe itself: never traced under trace_all */
const volatile __u32 nr_cpus = 1;            /* for splitting the rate budget */
const volatile __u64 max_events_per_sec = 0; /* storage.max_events_per_second */
const volatile __u32 capture_stacks = 0;     /* --stack */
/* Ring sizes as resized by the loader, for the early wake-up heuristic. */
const volatile __u64 events_ring_bytes = 1 << 24;
const volatile __u64 payloads_ring_bytes = 1 << 22;

/* Changes after load: counted per CPU, read by user space, summed over objects. */
__u64 wp_drops[WP_MAX_CPUS] = {};      /* events lost: `events` ring reservations that failed */
__u64 wp_payload_drops[WP_MAX_CPUS] = {}; /* payload records (paths, argv, bytes) the `payloads` ring had no room for */
__u64 wp_rate_drops[WP_MAX_CPUS] = {}; /* events over max_events_per_sec */
__u64 wp_rate_window[WP_MAX_CPUS] = {};
__u64 wp_rate_count[WP_MAX_CPUS] = {};

/* Put the record layouts into every object's BTF, where the layout test reads them. */
struct wp_event wp_event_layout = {};
struct wp_payload wp_payload_layout = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 24);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} payloads SEC(".maps");

/* The traced tgids: one byte per pid (1 = traced) in the single value of an
 * array. The JIT inlines an array lookup, where the hash this replaced cost
 * ~20 ns on every context switch and wake-up of the host. Bytes are only ever
 * stored, never read-modify-written: user space writes them through mmap
 * (kernel/loader.py), the fork/exit/sniff programs with plain stores, so the
 * two sides cannot undo each other. Children are added by the fork tracepoint. */
struct wp_pidset {
	__u8 traced[WP_PID_LIMIT];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wp_pidset);
} targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 127 * sizeof(__u64));
} stacks SEC(".maps");

static __always_inline __u32 wp_cpu_slot(void)
{
	return bpf_get_smp_processor_id() & (WP_MAX_CPUS - 1);
}

static __always_inline __u8 *wp_pid_slot(__u32 tgid)
{
	__u32 zero = 0;
	struct wp_pidset *set = bpf_map_lookup_elem(&targets, &zero);

	if (!set)
		return NULL;
	/* A mask rather than a compare: clang may test a copy of tgid and leave the
	 * index unbounded for the verifier. Pids never reach WP_PID_LIMIT. */
	return &set->traced[tgid & (WP_PID_LIMIT - 1)];
}

static __always_inline bool wp_traced(__u32 tgid)
{
	__u8 *slot;

	/* Tracing the tracer would feed its own drain and writes back into the ring. */
	if (trace_all)
		return tgid != tracer_tgid;
	slot = wp_pid_slot(tgid);
	return slot && *slot;
}

static __always_inline void wp_set_traced(__u32 tgid, __u8 traced)
{
	__u8 *slot = wp_pid_slot(tgid);

	if (slot)
		*slot = traced;
}

/* Per-CPU one-second windows, each CPU allowed its share of the budget. */
static __always_inline bool wp_rate_ok(__u32 slot)
{
	__u64 now, budget;

	if (!max_events_per_sec)
		return true;
	now = bpf_ktime_get_ns();
	budget = max_events_per_sec / (nr_cpus ? nr_cpus : 1);
	if (!budget)
		budget = 1;
	if (now - wp_rate_window[slot] >= 1000000000ULL) {
		wp_rate_window[slot] = now;
		wp_rate_count[slot] = 0;
	}
	if (wp_rate_count[slot] >= budget) {
		__sync_fetch_and_add(&wp_rate_drops[slot], 1);
		return false;
	}
	wp_rate_count[slot]++;
	return true;
}

/* Reserve an event after all filters passed; counts every failure. */
static __always_inline struct wp_event *wp_reserve(void)
{
	__u32 slot = wp_cpu_slot();
	struct wp_event *e;

	if (!wp_rate_ok(slot))
		return NULL;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__sync_fetch_and_add(&wp_drops[slot], 1);
		return NULL;
	}
	return e;
}

/* Everything but cgroup_id and comm, for families that cache those per task. */
static __always_inline void wp_fill_ids(struct wp_event *e, __u16 source, __u16 op, __u64 pid_tgid)
{
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->cpu = bpf_get_smp_processor_id();
	e->source = source;
	e->op = op;
	e->flags = 0;
	e->stack_id = -1;
	e->duration_ns = 0; /* instant events: ring memory holds an older record's value */
	e->arg0 = e->arg1 = e->arg2 = e->aux = 0;
	e->ret = 0;
}

static __always_inline void wp_fill(struct wp_event *e, __u16 source, __u16 op, __u64 pid_tgid)
{
	wp_fill_ids(e, source, op, pid_tgid);
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
}

/* No wake-up per record: user space drains on a timer, and is woken early
 * only when the ring is more than half full. */
static __always_inline __u64 wp_wakeup_flags(void *ring, __u64 ring_size)
{
	return bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA) > ring_size / 2 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* The event ring's fill level is checked every WP_QUERY_EVERY records per CPU
 * (bpf_ringbuf_query is ~15 ns, a whole event ~100 ns); a payload record, which
 * copies a path or message, checks its ring each time. One count for both
 * rings let them alternate so that the payload ring was never checked. */
#define WP_QUERY_EVERY 16
__u64 wp_event_submits[WP_MAX_CPUS] = {};

static __always_inline __u64 wp_event_wakeup_flags(void)
{
	if (wp_event_submits[wp_cpu_slot()]++ % WP_QUERY_EVERY)
		return BPF_RB_NO_WAKEUP;
	return wp_wakeup_flags(&events, events_ring_bytes);
}

#define wp_submit_event(e) bpf_ringbuf_submit((e), wp_event_wakeup_flags())

/* A payload record is built in a per-CPU scratch buffer, then copied into the
 * ring at its real length (bpf_ringbuf_output): a 20-byte path takes 72 bytes
 * of ring, not a 4 KiB slot. A reservation must be of constant size, and the
 * length of a user string is only known once it has been read.
 * Two programs never share a scratch buffer mid-record: each object has its
 * own map; tp/ and uprobe programs run one at a time per CPU (the kernel's
 * bpf_prog_active guard skips a nested one), and the raw_tp/tp_btf programs
 * that write payloads (proc) run with preemption disabled. */
struct wp_payload_rec {
	struct wp_payload hdr;
	__u8 data[WP_CHUNK_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wp_payload_rec);
} payload_scratch SEC(".maps");

/* The scratch record of this CPU with its header zeroed; NULL only if the map lookup fails. */
static __always_inline struct wp_payload_rec *wp_payload_scratch(void)
{
	__u32 zero = 0;
	struct wp_payload_rec *p = bpf_map_lookup_elem(&payload_scratch, &zero);

	if (p)
		__builtin_memset(&p->hdr, 0, sizeof(p->hdr));
	return p;
}

/* A payload chunk of thread `pid_tgid` at `ts`, its header filled but for
 * conn, offset and the lengths. */
static __always_inline struct wp_payload_rec *wp_start_payload(__u64 pid_tgid, __u64 ts, __u16 kind, __s32 fd)
{
	struct wp_payload_rec *p = wp_payload_scratch();

	if (!p)
		return NULL;
	p->hdr.ts_ns = ts;
	p->hdr.pid = pid_tgid >> 32;
	p->hdr.tid = (__u32)pid_tgid;
	p->hdr.fd = fd;
	p->hdr.kind = kind;
	return p;
}

/* Copy the header and hdr.len data bytes into the ring; false, counted in
 * wp_payload_drops, when it is full (the event the payload belongs to is not lost). */
static __always_inline bool wp_output_payload(struct wp_payload_rec *p)
{
	__u64 len = p->hdr.len;

	if (len > WP_CHUNK_LEN)
		len = WP_CHUNK_LEN;
	if (bpf_ringbuf_output(&payloads, p, sizeof(p->hdr) + len, wp_wakeup_flags(&payloads, payloads_ring_bytes))) {
		__sync_fetch_and_add(&wp_payload_drops[wp_cpu_slot()], 1);
		return false;
	}
	return true;
}

/* Submit a chunk holding all `n` bytes the call moved (n < 0: none). */
static __always_inline void wp_finish_payload(struct wp_payload_rec *p, long n)
{
	p->hdr.len = n > 0 ? n : 0;
	p->hdr.total = p->hdr.len;
	wp_output_payload(p);
}

#endif /* __WP_COMMON_BPF_H */
