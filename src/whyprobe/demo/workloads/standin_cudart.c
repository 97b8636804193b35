// SPDX-License-Identifier: Apache-2.0
/* A stand-in CUDA runtime (built as libcudart.so.12, -DSTANDIN_RUNTIME) and
 * driver (built as libcuda.so.1, -DSTANDIN_DRIVER): the same exported symbols
 * and argument layouts as the real libraries, calls that take a controlled
 * time, so tests and demos produce real latency with real kernel evidence.
 *
 * Model of a GPU-bound queue: each launch spins `launch_ns` on the CPU (the
 * launch overhead) and queues `kernel_ns` of device work; a synchronize sleeps
 * until the queue is empty, plus `sync_ns`; a synchronous copy waits for the
 * queue, then reads `count` bytes from `memcpy_file` if one is set (real disk
 * I/O under the call). Knobs: env STANDIN_LAUNCH_NS, STANDIN_KERNEL_NS,
 * STANDIN_SYNC_NS, STANDIN_MEMCPY_FILE, or standin_control() at run time.
 * Every entry point starts with push %rbp like the real runtime (uprobes on
 * it are emulated, not single-stepped): see the hooks below. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define API __attribute__((visibility("default"), noinline))
#define HOOK __attribute__((visibility("hidden"), no_instrument_function, noipa))

/* Built with -finstrument-functions only so every entry point is a non-leaf
 * function with a frame-pointer prologue; the hooks do nothing. */
HOOK void __cyg_profile_func_enter(void *fn, void *site) { (void)fn; (void)site; }
HOOK void __cyg_profile_func_exit(void *fn, void *site) { (void)fn; (void)site; }

static long long launch_ns, kernel_ns, sync_ns;
static char memcpy_file[4096];
static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t busy_until; /* CLOCK_MONOTONIC ns when queued device work ends */
static uint64_t next_devptr = 0x7f0000000000ULL;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static long long env_ns(const char *name)
{
	const char *v = getenv(name);

	return v ? atoll(v) : 0;
}

__attribute__((constructor)) static void standin_init(void)
{
	const char *f = getenv("STANDIN_MEMCPY_FILE");

	launch_ns = env_ns("STANDIN_LAUNCH_NS");
	kernel_ns = env_ns("STANDIN_KERNEL_NS");
	sync_ns = env_ns("STANDIN_SYNC_NS");
	if (f)
		strncpy(memcpy_file, f, sizeof(memcpy_file) - 1);
}

/* Set a knob: "launch_ns", "kernel_ns", "sync_ns"; returns 0, or -1 for an unknown key. */
API int standin_control(const char *key, long long value)
{
	if (!strcmp(key, "launch_ns"))
		launch_ns = value;
	else if (!strcmp(key, "kernel_ns"))
		kernel_ns = value;
	else if (!strcmp(key, "sync_ns"))
		sync_ns = value;
	else
		return -1;
	return 0;
}

API void standin_set_memcpy_file(const char *path)
{
	memcpy_file[0] = 0;
	if (path)
		strncpy(memcpy_file, path, sizeof(memcpy_file) - 1);
}

static void spin(long long ns)
{
	uint64_t end;

	if (ns <= 0)
		return;
	end = now_ns() + (uint64_t)ns;
	while (now_ns() < end)
		;
}

static void sleep_until(uint64_t t)
{
	struct timespec ts = { .tv_sec = t / 1000000000ULL, .tv_nsec = t % 1000000000ULL };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static int launch(void)
{
	uint64_t now;

	spin(launch_ns);
	now = now_ns();
	pthread_mutex_lock(&queue_lock);
	busy_until = (busy_until > now ? busy_until : now) + (uint64_t)kernel_ns;
	pthread_mutex_unlock(&queue_lock);
	return 0;
}

static int synchronize(void)
{
	uint64_t until;

	pthread_mutex_lock(&queue_lock);
	until = busy_until;
	pthread_mutex_unlock(&queue_lock);
	if (until > now_ns())
		sleep_until(until);
	if (sync_ns > 0)
		sleep_until(now_ns() + (uint64_t)sync_ns);
	return 0;
}

static int copy(size_t count, int wait_queue)
{
	static char buf[1 << 16];
	int fd;

	if (wait_queue)
		synchronize();
	if (!memcpy_file[0])
		return 0;
	fd = open(memcpy_file, O_RDONLY);
	if (fd < 0)
		return 1;
	for (size_t done = 0; done < count;) {
		size_t want = count - done < sizeof(buf) ? count - done : sizeof(buf);
		ssize_t n = pread(fd, buf, want, (off_t)done);

		if (n <= 0)
			break;
		done += (size_t)n;
	}
	close(fd);
	return 0;
}

/* A function and its per-thread-stream twin (_ptsz/_ptds): two exported entry
 * points sharing one body, as in the real runtime. Neither calls the other,
 * so a probe on each fires once per call. */
#define VARIANTS(ret, name, sfx, params, args) \
	static ret name##_impl params; \
	API ret name params { return name##_impl args; } \
	API ret name##sfx params { return name##_impl args; } \
	static ret name##_impl params

static uint64_t devptr(size_t size)
{
	return __atomic_fetch_add(&next_devptr, (size + 255) & ~255ULL, __ATOMIC_RELAXED);
}

#ifdef STANDIN_RUNTIME
typedef int cudaError_t;
typedef void *cudaStream_t;
typedef void *cudaEvent_t;
typedef struct { unsigned x, y, z; } dim3;
typedef struct {
	dim3 gridDim;
	dim3 blockDim;
	size_t dynamicSmemBytes;
	cudaStream_t stream;
	void *attrs;
	unsigned numAttrs;
} cudaLaunchConfig_t;


API cudaError_t cudaMalloc(void **p, size_t n) { *p = (void *)devptr(n); return 0; }
VARIANTS(cudaError_t, cudaMallocAsync, _ptsz, (void **p, size_t n, cudaStream_t s), (p, n, s)) { (void)s; *p = (void *)devptr(n); return 0; }
API cudaError_t cudaMallocManaged(void **p, size_t n, unsigned f) { (void)f; *p = (void *)devptr(n); return 0; }
API cudaError_t cudaMallocHost(void **p, size_t n) { *p = malloc(n ? n : 1); return *p ? 0 : 2; }
API cudaError_t cudaHostAlloc(void **p, size_t n, unsigned f) { (void)f; *p = malloc(n ? n : 1); return *p ? 0 : 2; }
API cudaError_t cudaFree(void *p) { (void)p; return 0; }
VARIANTS(cudaError_t, cudaFreeAsync, _ptsz, (void *p, cudaStream_t s), (p, s)) { (void)p; (void)s; return 0; }
VARIANTS(cudaError_t, cudaLaunchKernel, _ptsz, (const void *f, dim3 g, dim3 b, void **a, size_t sh, cudaStream_t s), (f, g, b, a, sh, s))
{
	(void)f; (void)g; (void)b; (void)a; (void)sh; (void)s;
	return launch();
}
/* As in the real runtime: a thin tail call into cudaLaunchKernel (must not be counted twice). */
API cudaError_t __cudaLaunchKernel(const void *f, dim3 g, dim3 b, void **a, size_t sh, cudaStream_t s)
{
	return cudaLaunchKernel(f, g, b, a, sh, s);
}
VARIANTS(cudaError_t, cudaLaunchKernelExC, _ptsz, (const cudaLaunchConfig_t *c, const void *f, void **a), (c, f, a)) { (void)c; (void)f; (void)a; return launch(); }
VARIANTS(cudaError_t, cudaGraphLaunch, _ptsz, (void *g, cudaStream_t s), (g, s)) { (void)g; (void)s; return launch(); }
VARIANTS(cudaError_t, cudaMemcpy, _ptds, (void *d, const void *s, size_t n, int k), (d, s, n, k)) { (void)d; (void)s; (void)k; return copy(n, 1); }
VARIANTS(cudaError_t, cudaMemcpyAsync, _ptsz, (void *d, const void *s, size_t n, int k, cudaStream_t st), (d, s, n, k, st)) { (void)d; (void)s; (void)k; (void)st; return copy(n, 0); }
VARIANTS(cudaError_t, cudaMemcpy2D, _ptds, (void *d, size_t dp, const void *s, size_t sp, size_t w, size_t h, int k), (d, dp, s, sp, w, h, k))
{
	(void)d; (void)dp; (void)s; (void)sp; (void)k;
	return copy(w * h, 1);
}
VARIANTS(cudaError_t, cudaMemcpy2DAsync, _ptsz, (void *d, size_t dp, const void *s, size_t sp, size_t w, size_t h, int k, cudaStream_t st), (d, dp, s, sp, w, h, k, st))
{
	(void)d; (void)dp; (void)s; (void)sp; (void)k; (void)st;
	return copy(w * h, 0);
}
API cudaError_t cudaMemcpyPeer(void *d, int dd, const void *s, int sd, size_t n) { (void)d; (void)dd; (void)s; (void)sd; return copy(n, 1); }
API cudaError_t cudaMemcpyPeerAsync(void *d, int dd, const void *s, int sd, size_t n, cudaStream_t st)
{
	(void)d; (void)dd; (void)s; (void)sd; (void)st;
	return copy(n, 0);
}
VARIANTS(cudaError_t, cudaMemset, _ptds, (void *p, int v, size_t n), (p, v, n)) { (void)p; (void)v; (void)n; return launch(); }
VARIANTS(cudaError_t, cudaMemsetAsync, _ptsz, (void *p, int v, size_t n, cudaStream_t s), (p, v, n, s)) { (void)p; (void)v; (void)n; (void)s; return launch(); }
VARIANTS(cudaError_t, cudaStreamSynchronize, _ptsz, (cudaStream_t s), (s)) { (void)s; return synchronize(); }
API cudaError_t cudaDeviceSynchronize(void) { return synchronize(); }
API cudaError_t cudaEventSynchronize(cudaEvent_t e) { (void)e; return synchronize(); }
VARIANTS(cudaError_t, cudaStreamWaitEvent, _ptsz, (cudaStream_t s, cudaEvent_t e, unsigned f), (s, e, f)) { (void)s; (void)e; (void)f; return 0; }
API cudaError_t cudaEventQuery(cudaEvent_t e) { (void)e; return busy_until > now_ns() ? 600 : 0; }
VARIANTS(cudaError_t, cudaStreamQuery, _ptsz, (cudaStream_t s), (s)) { (void)s; return busy_until > now_ns() ? 600 : 0; }
/* An empty function for the overhead bench: the cost of a bare probe pair. */
/* CUDA 13 launch stubs ask for a cudaKernel_t per host stub and launch that:
 * an opaque handle per stub, as a runtime with a driver may return. */
#define STANDIN_MAX_STUBS 64
static const void *stubs[STANDIN_MAX_STUBS];
static int nstubs;
static pthread_mutex_t stubs_lock = PTHREAD_MUTEX_INITIALIZER;

static cudaError_t get_kernel(void **handle, const void *stub)
{
	int i;

	if (!handle || !stub)
		return 1; /* cudaErrorInvalidValue */
	pthread_mutex_lock(&stubs_lock);
	for (i = 0; i < nstubs && stubs[i] != stub; i++)
		;
	if (i == nstubs && nstubs < STANDIN_MAX_STUBS)
		stubs[nstubs++] = stub;
	pthread_mutex_unlock(&stubs_lock);
	if (i == STANDIN_MAX_STUBS)
		return 2; /* cudaErrorMemoryAllocation */
	*handle = (void *)&stubs[i];
	return 0;
}
API cudaError_t cudaGetKernel(void **handle, const void *stub) { return get_kernel(handle, stub); }
API cudaError_t __cudaGetKernel(void **handle, const void *stub) { return get_kernel(handle, stub); }

API int standin_empty(void) { return 0; }
#endif /* STANDIN_RUNTIME */

#ifdef STANDIN_DRIVER
typedef int CUresult;
typedef uint64_t CUdeviceptr;
typedef void *CUstream;
typedef struct {
	unsigned gridDimX, gridDimY, gridDimZ;
	unsigned blockDimX, blockDimY, blockDimZ;
	unsigned sharedMemBytes;
	CUstream hStream;
	void *attrs;
	unsigned numAttrs;
} CUlaunchConfig;


VARIANTS(CUresult, cuLaunchKernel, _ptsz, (void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned sh, CUstream s, void **p, void **e), (f, gx, gy, gz, bx, by, bz, sh, s, p, e))
{
	(void)f; (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)sh; (void)s; (void)p; (void)e;
	return launch();
}
VARIANTS(CUresult, cuLaunchKernelEx, _ptsz, (const CUlaunchConfig *c, void *f, void **p, void **e), (c, f, p, e)) { (void)c; (void)f; (void)p; (void)e; return launch(); }
VARIANTS(CUresult, cuGraphLaunch, _ptsz, (void *g, CUstream s), (g, s)) { (void)g; (void)s; return launch(); }
VARIANTS(CUresult, cuMemcpyHtoD_v2, _ptds, (CUdeviceptr d, const void *s, size_t n), (d, s, n)) { (void)d; (void)s; return copy(n, 1); }
VARIANTS(CUresult, cuMemcpyDtoH_v2, _ptds, (void *d, CUdeviceptr s, size_t n), (d, s, n)) { (void)d; (void)s; return copy(n, 1); }
VARIANTS(CUresult, cuMemcpyDtoD_v2, _ptds, (CUdeviceptr d, CUdeviceptr s, size_t n), (d, s, n)) { (void)d; (void)s; return copy(n, 1); }
VARIANTS(CUresult, cuMemcpyHtoDAsync_v2, _ptsz, (CUdeviceptr d, const void *s, size_t n, CUstream st), (d, s, n, st)) { (void)d; (void)s; (void)st; return copy(n, 0); }
VARIANTS(CUresult, cuMemcpyDtoHAsync_v2, _ptsz, (void *d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st)) { (void)d; (void)s; (void)st; return copy(n, 0); }
VARIANTS(CUresult, cuMemcpyDtoDAsync_v2, _ptsz, (CUdeviceptr d, CUdeviceptr s, size_t n, CUstream st), (d, s, n, st)) { (void)d; (void)s; (void)st; return copy(n, 0); }
API CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t n) { *p = devptr(n); return 0; }
VARIANTS(CUresult, cuMemAllocAsync, _ptsz, (CUdeviceptr *p, size_t n, CUstream s), (p, n, s)) { (void)s; *p = devptr(n); return 0; }
API CUresult cuMemAllocManaged(CUdeviceptr *p, size_t n, unsigned f) { (void)f; *p = devptr(n); return 0; }
API CUresult cuMemFree_v2(CUdeviceptr p) { (void)p; return 0; }
API CUresult cuCtxSynchronize(void) { return synchronize(); }
VARIANTS(CUresult, cuStreamSynchronize, _ptsz, (CUstream s), (s)) { (void)s; return synchronize(); }
API CUresult cuEventSynchronize(void *e) { (void)e; return synchronize(); }
API CUresult cuMemMap(CUdeviceptr p, size_t n, size_t off, uint64_t h, unsigned long long f) { (void)p; (void)n; (void)off; (void)h; (void)f; return 0; }
API CUresult cuMemCreate(uint64_t *h, size_t n, const void *prop, unsigned long long f) { (void)prop; (void)f; *h = devptr(n); return 0; }

/* Kernel handles by name, as a loaded module or library hands them out: an
 * opaque pointer per (name, kind), stable for the life of the process. Kind
 * 0 = CUfunction of a module, 1 = CUkernel of a library, 2 = the CUfunction
 * cuKernelGetFunction derives from a CUkernel (a different handle, same name). */
#define STANDIN_MAX_KERNELS 64
struct standin_kernel {
	char name[256];
	int kind;
};
static struct standin_kernel kernels[STANDIN_MAX_KERNELS];
static int nkernels;
static pthread_mutex_t kernels_lock = PTHREAD_MUTEX_INITIALIZER;

static struct standin_kernel *kernel_handle(const char *name, int kind)
{
	struct standin_kernel *k = NULL;

	if (!name || !*name || strlen(name) >= sizeof(kernels[0].name))
		return NULL;
	pthread_mutex_lock(&kernels_lock);
	for (int i = 0; i < nkernels && !k; i++)
		if (kernels[i].kind == kind && !strcmp(kernels[i].name, name))
			k = &kernels[i];
	if (!k && nkernels < STANDIN_MAX_KERNELS) {
		k = &kernels[nkernels++];
		strcpy(k->name, name);
		k->kind = kind;
	}
	pthread_mutex_unlock(&kernels_lock);
	return k;
}

/* Not a driver API: lets a test driver make a CUkernel without a (probed) lookup. */
API void *standin_kernel(const char *name) { return kernel_handle(name, 1); }

#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_NOT_FOUND 500
API CUresult cuModuleGetFunction(void **f, void *mod, const char *name)
{
	(void)mod;
	if (!f)
		return CUDA_ERROR_INVALID_VALUE;
	*f = kernel_handle(name, 0);
	return *f ? 0 : CUDA_ERROR_NOT_FOUND;
}
API CUresult cuLibraryGetKernel(void **k, void *lib, const char *name)
{
	(void)lib;
	if (!k)
		return CUDA_ERROR_INVALID_VALUE;
	*k = kernel_handle(name, 1);
	return *k ? 0 : CUDA_ERROR_NOT_FOUND;
}
API CUresult cuKernelGetFunction(void **f, void *kernel)
{
	struct standin_kernel *k = kernel;

	if (!f || !k || k < kernels || k >= kernels + STANDIN_MAX_KERNELS || k->kind != 1)
		return CUDA_ERROR_INVALID_VALUE;
	*f = kernel_handle(k->name, 2);
	return *f ? 0 : CUDA_ERROR_NOT_FOUND;
}
#endif /* STANDIN_DRIVER */
