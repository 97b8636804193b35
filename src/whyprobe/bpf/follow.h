/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Layouts of the targeting object (follow.bpf.c), mirrored in record/follow.py. */
#ifndef __WP_FOLLOW_H
#define __WP_FOLLOW_H

/* Base-name prefixes of the libraries the families probe (libcudart.so, libssl.so ...). */
#define WP_LIBNAMES 16
#define WP_LIBNAME_LEN 28
/* Exec notices carry the program's file name and argv head themselves: a
 * short-lived program is gone before /proc could be read. */
#define WP_NOTICE_PATH 256
#define WP_NOTICE_ARGS 256

struct wp_libname {
	__u32 len;
	char name[WP_LIBNAME_LEN];
};

/* Kinds of struct wp_notice. */
enum wp_notice_kind {
	WP_NOTICE_FORK = 1, /* pid = child, ppid = traced parent */
	WP_NOTICE_EXIT = 2, /* pid left the traced set */
	WP_NOTICE_EXEC = 3, /* pid runs `path` (argv head in args) named `comm`, ppid = parent: cached names are stale */
	WP_NOTICE_HOLD = 4, /* pid stopped at the open of a library (see `held`) */
};

/* One record of the `notices` ring: a wake-up for user space, never the only
 * copy of a fact (the pid set and `held` are). Widest fields first, no holes. */
struct wp_notice {
	__u64 ts_ns;
	__u64 start_ns; /* when the notifying process started (CLOCK_MONOTONIC; an exec keeps it) */
	__u32 kind;
	__u32 pid;
	__u32 tid;
	__u32 ppid;
	__s32 fd;
	__u32 args_len; /* bytes of args used (NUL-separated argv head) */
	char comm[WP_COMM_LEN]; /* exec: the new program's */
	char path[WP_NOTICE_PATH]; /* exec: file name as given to execve, NUL-terminated */
	char args[WP_NOTICE_ARGS];
};

/* Value of `held`, keyed by the tid that opened the library. */
struct wp_held {
	__u64 ts_ns;
	__u32 pid;
	__s32 fd;
};

#endif /* __WP_FOLLOW_H */
