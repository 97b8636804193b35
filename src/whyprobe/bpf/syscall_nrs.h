/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* x86_64 numbers of the syscalls whyprobe records one by one (syscalls and
 * footprint families); syscalls_x86_64.py names them all. */
#ifndef __WP_SYSCALL_NRS_H
#define __WP_SYSCALL_NRS_H

#define NR_OPEN 2
#define NR_MMAP 9
#define NR_SOCKET 41
#define NR_CONNECT 42
#define NR_ACCEPT 43
#define NR_BIND 49
#define NR_CLONE 56
#define NR_FORK 57
#define NR_VFORK 58
#define NR_EXECVE 59
#define NR_EXIT 60
#define NR_RENAME 82
#define NR_UNLINK 87
#define NR_EXIT_GROUP 231
#define NR_OPENAT 257
#define NR_UNLINKAT 263
#define NR_RENAMEAT 264
#define NR_ACCEPT4 288
#define NR_RENAMEAT2 316
#define NR_EXECVEAT 322
#define NR_CLONE3 435
#define NR_OPENAT2 437

#endif /* __WP_SYSCALL_NRS_H */
