/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* CUDA uprobes: the attach cookie of each probed symbol, shared with
 * probes/cuda.py (tests/unit/test_cuda_symbols.py checks the two agree).
 *
 * cookie bits  0-15  op id (events.py, per source)
 *             16-23  source (WP_SRC_CUDA or WP_SRC_DRIVER)
 *             24     WP_F_PTSZ (per-thread default stream variant)
 *             32-39  argument layout class (enum cuda_layout)
 *             40-47  constant memcpy kind, for driver copies whose kind is in the name
 */
#ifndef __WP_CUDA_H
#define __WP_CUDA_H

#define CUDA_COOKIE_OP(c)     ((__u16)((c) & 0xffff))
#define CUDA_COOKIE_SOURCE(c) ((__u16)(((c) >> 16) & 0xff))
#define CUDA_COOKIE_PTSZ(c)   ((__u32)(((c) >> 24) & 1))
#define CUDA_COOKIE_LAYOUT(c) ((__u32)(((c) >> 32) & 0xff))
#define CUDA_COOKIE_KIND(c)   ((__u64)(((c) >> 40) & 0xff))

/* Where a function's interesting arguments are at entry (FACTS-cuda-cpython.md
 * Part 1). Each class fills arg0/arg1/arg2 of the event; `aux` is left for the
 * Python stack id (WP_F_HAS_PYSTACK). */
enum cuda_layout {
	CL_NONE = 0,          /* cudaDeviceSynchronize(), cuCtxSynchronize() */
	CL_MALLOC = 1,        /* (void **p, size): arg0 = size, arg1 = *p at return */
	CL_MALLOC_ASYNC = 2,  /* (void **p, size, stream): + arg2 = stream */
	CL_MALLOC_FLAGS = 3,  /* (void **p, size, unsigned flags): arg0 = size, arg1 = flags */
	CL_PTR = 4,           /* (p): arg0 = p (free, event sync/query) */
	CL_PTR_STREAM = 5,    /* (p, stream): arg0 = p, arg2 = stream (free async, graph launch) */
	CL_LAUNCH = 6,        /* cudaLaunchKernel(func, dim3 grid, dim3 block, args, shmem, stream) */
	CL_LAUNCH_CFG = 7,    /* (const cfg *, func, ...): grid@0, block@12, stream@32 */
	CL_MEMCPY = 8,        /* (dst, src, n, kind) */
	CL_MEMCPY_ASYNC = 9,  /* (dst, src, n, kind, stream) */
	CL_MEMCPY2D = 10,     /* (dst, dpitch, src, spitch, w, h, [sp+8] kind) */
	CL_MEMCPY2D_ASYNC = 11, /* ... [sp+8] kind, [sp+16] stream */
	CL_MEMCPY_PEER = 12,  /* (dst, dev, src, dev, n) */
	CL_MEMCPY_PEER_ASYNC = 13, /* (dst, dev, src, dev, n, stream) */
	CL_MEMSET = 14,       /* (p, int value, n) */
	CL_MEMSET_ASYNC = 15, /* (p, int value, n, stream) */
	CL_STREAM = 16,       /* (stream): arg2 = stream */
	CL_STREAM_WAIT = 17,  /* (stream, event, flags): arg0 = event, arg2 = stream */
	CL_CU_LAUNCH = 18,    /* cuLaunchKernel(f, gx, gy, gz, bx, by, [sp+8] bz, shmem, [sp+24] stream, ...) */
	CL_CU_MEMCPY = 19,    /* (dst, src, n): arg0 = n, arg1 = kind from the cookie */
	CL_CU_MEMCPY_ASYNC = 20, /* (dst, src, n, stream) */
	CL_SIZE2 = 21,        /* (x, size, ...): arg0 = size, arg1 = x (cuMemMap) */
	CL_GET_FUNC = 22,     /* (handle *out, in, const char *name): arg0 = in, arg1 = *out at return,
	                       * arg2 = name pointer; the name follows as a WP_PL_SYMBOL payload */
	CL_GET_FUNC_OF = 23,  /* (handle *out, in): arg0 = in, arg1 = *out at return (cuKernelGetFunction) */
};

#endif /* __WP_CUDA_H */
