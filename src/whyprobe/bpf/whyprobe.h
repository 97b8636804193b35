/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Record layouts shared by every whyprobe BPF program and by user space.
 * events.py mirrors these byte for byte; tests/unit/test_layout.py
 * checks the Python dtypes against the BTF of the compiled objects. */
#ifndef __WHYPROBE_H
#define __WHYPROBE_H

#define WP_COMM_LEN 16
#define WP_MAX_CPUS 256
#define WP_PID_LIMIT (1 << 22) /* PID_MAX_LIMIT on 64-bit: the largest pid_max can be */
/* Largest data chunk of one payload record (MCP bytes, paths, argv). */
#define WP_CHUNK_LEN 4096

/* Event sources: ids 1-7 are Ingero's, so its databases read unchanged. */
enum wp_source {
	WP_SRC_CUDA = 1,    /* CUDA runtime (libcudart) uprobes */
	WP_SRC_NVIDIA = 2,  /* reserved (Ingero) */
	WP_SRC_HOST = 3,    /* scheduler, process lifecycle, memory */
	WP_SRC_DRIVER = 4,  /* CUDA driver (libcuda) uprobes */
	WP_SRC_IO = 5,      /* block I/O */
	WP_SRC_TCP = 6,     /* TCP retransmits */
	WP_SRC_NET = 7,     /* socket send/recv syscalls */
	WP_SRC_SYSCALL = 8, /* individual syscalls; op = x86_64 syscall number */
	WP_SRC_CUSTOM = 9,  /* config probes: op = uprobe index, 1000 + tracepoint index */
};

/* Flags on struct wp_event. */
#define WP_F_PTSZ      (1u << 0) /* per-thread default stream variant (_ptsz/_ptds) */
#define WP_F_NO_RETURN (1u << 1) /* thread exited before the call returned */
#define WP_F_PREEMPTED (1u << 2) /* sched_switch: prev_state was TASK_RUNNING */
#define WP_F_HAS_PAYLOAD (1u << 3) /* a payload record with the same (tid, ts_ns) follows */
#define WP_F_HAS_PYSTACK (1u << 4) /* a Python stack is stored under aux */
/* Set by user space, never by BPF: WP_F_HAS_PAYLOAD was set but the payload was
 * lost (payloads ring full), so the stored event has no detail. */
#define WP_F_DETAIL_LOST (1u << 8)
#define WP_F_SOCK_OWNER (1u << 9)  /* tcp_retransmit: pid/tid are the socket's owner, not the current task */
#define WP_F_FAULT_WAIT (1u << 10) /* sched_switch: blocked outside any syscall (in a page fault) */

/* One fixed-size record in the `events` ring. Widest fields first, no holes. */
struct wp_event {
	__u64 ts_ns;       /* bpf_ktime_get_ns() at entry / interval start */
	__u64 duration_ns; /* entry to return, or length of the interval */
	__u64 arg0;        /* op-specific: size, kernel function, bytes ... */
	__u64 arg1;        /* op-specific: memcpy kind, preemptor tid ... */
	__u64 arg2;        /* op-specific: stream, device ... */
	__u64 aux;         /* op-specific: waker tid, pystack id ... */
	__u64 cgroup_id;
	__s64 ret;         /* return value (CUDA error code, syscall result) */
	__u32 pid;         /* tgid */
	__u32 tid;
	__u32 cpu;
	__s32 stack_id;    /* user stack in the `stacks` map, -1 = none */
	__u16 source;      /* enum wp_source */
	__u16 op;          /* per-source op id (events.py) */
	__u32 flags;       /* WP_F_* */
	char comm[WP_COMM_LEN];
};

/* Kinds of payload record. */
enum wp_payload_kind {
	WP_PL_PATH = 1,      /* file name of an open/exec/unlink/rename/mmap */
	WP_PL_ARGV = 2,      /* argv head of an exec, NUL-separated */
	WP_PL_SOCKADDR = 3,  /* struct sockaddr of connect/accept/bind */
	WP_PL_READ = 4,      /* bytes a process read (pipe, socket) */
	WP_PL_WRITE = 5,     /* bytes a process wrote */
	WP_PL_SSL_READ = 6,  /* plaintext after SSL_read */
	WP_PL_SSL_WRITE = 7, /* plaintext given to SSL_write */
	WP_PL_SYMBOL = 8,    /* a name a call was given (cuModuleGetFunction's kernel name) */
};

#define WP_PL_TRUNCATED (1u << 0) /* the syscall moved more than was captured */
#define WP_PL_PIPE      (1u << 1) /* transport of a READ/WRITE payload */
#define WP_PL_UNIX      (1u << 2)
#define WP_PL_TCP       (1u << 3)
#define WP_PL_TLS       (1u << 4) /* plaintext at SSL_read/SSL_write */
#define WP_PL_SNIFFED   (1u << 5) /* process auto-enrolled because it spoke JSON-RPC/HTTP */

/* Header of a variable-size record in the `payloads` ring; `len` data bytes follow. */
struct wp_payload {
	__u64 ts_ns;   /* same ts_ns as the wp_event it belongs to, if any */
	__u64 conn;    /* pipe/socket inode, or SSL* for TLS */
	__u64 offset;  /* offset of this chunk in the whole message */
	__u32 pid;
	__u32 tid;
	__s32 fd;
	__u32 len;     /* bytes of data in this chunk */
	__u32 total;   /* bytes the call moved in all */
	__u16 kind;    /* enum wp_payload_kind */
	__u16 flags;   /* WP_PL_* */
};

#ifndef __cplusplus
_Static_assert(sizeof(struct wp_event) == 104, "wp_event layout changed: update events.py");
_Static_assert(sizeof(struct wp_payload) == 48, "wp_payload layout changed: update events.py");
#endif

#endif /* __WHYPROBE_H */
