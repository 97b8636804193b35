// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Block I/O requests of the traced set: latency from issue to completion,
 * bytes, read/write/discard/flush, device and sector.
 *
 * Attribution: a request belongs to the task that created it. block_io_start
 * fires in the submitter's context when the request is allocated, so a
 * fsync() or O_DIRECT write is attributed to the writing thread even when a
 * kworker or another CPU issues it later; block_rq_insert and block_rq_issue
 * are fallbacks for queues without I/O accounting. Background writeback of
 * dirty pages is submitted by the flusher kworker and so is attributed to it
 * (and not recorded unless the kworker is traced): only syncs driven by a
 * traced thread (fsync, sync_file_range, O_SYNC/O_DIRECT) are its own.
 *
 * Record (source IO, op = read/write/discard/flush): ts_ns = issue,
 * duration_ns = issue -> completion, arg0 = bytes, arg1 = device (major << 20
 * | minor, the kernel's dev_t), arg2 = sector, aux = queued ns before issue,
 * ret = blk_status_t (0 = ok). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.bpf.h"
#include "host.h"

char LICENSE[] SEC("license") = "GPL";

#define REQ_OP_MASK_ 0xff

struct rq_owner {
	__u64 pid_tgid;
	__u64 cgroup_id;
	__u64 created;
	__u64 issued;
	__u64 bytes;
	char comm[WP_COMM_LEN];
};

/* LRU: a request merged away or aborted never completes; don't leak it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct rq_owner);
} reqs SEC(".maps");

static __always_inline struct rq_owner *sighting(struct request *rq, __u64 now)
{
	__u64 key = (__u64)rq;
	__u64 id;
	struct rq_owner r = {};
	struct rq_owner *found = bpf_map_lookup_elem(&reqs, &key);

	if (found)
		return found;
	id = bpf_get_current_pid_tgid();
	if (!wp_traced(id >> 32))
		return NULL;
	r.pid_tgid = id;
	r.cgroup_id = bpf_get_current_cgroup_id();
	r.created = now;
	bpf_get_current_comm(r.comm, sizeof(r.comm));
	bpf_map_update_elem(&reqs, &key, &r, BPF_NOEXIST);
	return bpf_map_lookup_elem(&reqs, &key);
}

static __always_inline void on_issue(struct request *rq)
{
	__u64 now = bpf_ktime_get_ns();
	struct rq_owner *r = sighting(rq, now);

	if (!r)
		return;
	r->issued = now;
	r->bytes = BPF_CORE_READ(rq, __data_len);
}

static __always_inline __u16 op_of(__u32 cmd_flags)
{
	switch (cmd_flags & REQ_OP_MASK_) {
	case REQ_OP_READ:
		return IO_OP_READ;
	case REQ_OP_WRITE:
		return IO_OP_WRITE;
	case REQ_OP_DISCARD:
	case REQ_OP_SECURE_ERASE:
	case REQ_OP_WRITE_ZEROES:
		return IO_OP_DISCARD;
	case REQ_OP_FLUSH:
		return IO_OP_FLUSH;
	}
	return 0;
}

static __always_inline void on_complete(struct request *rq, int error)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 key = (__u64)rq;
	struct gendisk *disk;
	struct wp_event *e;
	struct rq_owner *r;
	__u16 op;

	r = bpf_map_lookup_elem(&reqs, &key);
	if (!r)
		return;
	op = op_of(BPF_CORE_READ(rq, cmd_flags));
	if (!r->issued || !op)
		goto out;
	e = wp_reserve();
	if (!e)
		goto out;
	wp_fill(e, WP_SRC_IO, op, r->pid_tgid);
	/* Completion runs in irq/softirq context: describe the submitter. */
	__builtin_memcpy(e->comm, r->comm, sizeof(e->comm));
	e->cgroup_id = r->cgroup_id;
	e->ts_ns = r->issued;
	e->duration_ns = now - r->issued;
	e->arg0 = r->bytes;
	disk = BPF_CORE_READ(rq, q, disk);
	if (disk)
		e->arg1 = ((__u64)BPF_CORE_READ(disk, major) << 20) | (__u32)BPF_CORE_READ(disk, first_minor);
	e->arg2 = BPF_CORE_READ(rq, __sector);
	e->aux = r->issued - r->created;
	e->ret = error;
	wp_submit_event(e);
out:
	bpf_map_delete_elem(&reqs, &key);
}

SEC("tp_btf/block_io_start")
int BPF_PROG(handle_io_start, struct request *rq)
{
	sighting(rq, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/block_rq_insert")
int BPF_PROG(handle_rq_insert, struct request *rq)
{
	sighting(rq, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(handle_rq_issue, struct request *rq)
{
	on_issue(rq);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(handle_rq_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	on_complete(rq, error);
	return 0;
}

SEC("raw_tp/block_io_start")
int BPF_PROG(handle_io_start_raw, struct request *rq)
{
	sighting(rq, bpf_ktime_get_ns());
	return 0;
}

SEC("raw_tp/block_rq_insert")
int BPF_PROG(handle_rq_insert_raw, struct request *rq)
{
	sighting(rq, bpf_ktime_get_ns());
	return 0;
}

SEC("raw_tp/block_rq_issue")
int BPF_PROG(handle_rq_issue_raw, struct request *rq)
{
	on_issue(rq);
	return 0;
}

SEC("raw_tp/block_rq_complete")
int BPF_PROG(handle_rq_complete_raw, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	on_complete(rq, error);
	return 0;
}
