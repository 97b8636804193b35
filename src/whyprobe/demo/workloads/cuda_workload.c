// SPDX-License-Identifier: Apache-2.0
/* Drive a CUDA runtime or driver library (real or stand-in) with a known plan
 * of calls, so traces can be checked call for call.
 *
 *   cuda_workload [options] LIB NAME=COUNT...
 *     LIB          path given to dlopen (libcudart.so.12, libcuda.so.1, a stand-in)
 *     NAME=COUNT   call exported function NAME COUNT times, in plan order
 *   -s SIZE    bytes for allocations, copies, memsets (default 4096)
 *   -k KIND    cudaMemcpyKind for runtime copies (default 1, HostToDevice)
 *   -S STREAM  stream handle passed where a function takes one (default 0x5000)
 *   -g X,Y,Z   launch grid (default 4,2,3); block is always 32,2,1
 *   -c CPU     pin every thread to this CPU
 *   -t N       run the plan in N threads at once (default 1)
 *   -l         loop the plan until killed
 *   -w         print "ready PID" and wait for a line on stdin before starting
 *   -v         print "done TOTAL" after every call (progress for kill tests)
 *   -r RATE    pace each thread to RATE calls per second (default: as fast as possible)
 * At the end prints the first return code seen per name, "calls TOTAL" and
 * "elapsed_ns NS" (wall time of the plan, threads included). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct { unsigned x, y, z; } dim3;
typedef struct {
	dim3 gridDim;
	dim3 blockDim;
	size_t dynamicSmemBytes;
	void *stream;
	void *attrs;
	unsigned numAttrs;
} launch_config; /* cudaLaunchConfig_t and CUlaunchConfig share grid@0, block@12, stream@32 */

struct params {
	size_t size;
	int kind;
	void *stream;
	dim3 grid, block;
};

typedef int (*caller_fn)(void *fn, const struct params *p);

static void fake_kernel(void) {}
static char host_buf[1 << 20];

#define CALL(t, ...) ((t)fn)(__VA_ARGS__)
#define DEV ((void *)0x7e0000000000ULL)

static int c_malloc(void *fn, const struct params *p) { void *d; return CALL(int (*)(void **, size_t), &d, p->size); }
static int c_malloc_async(void *fn, const struct params *p) { void *d; return CALL(int (*)(void **, size_t, void *), &d, p->size, p->stream); }
static int c_malloc_flags(void *fn, const struct params *p) { void *d; return CALL(int (*)(void **, size_t, unsigned), &d, p->size, 1); }
static int c_ptr(void *fn, const struct params *p) { (void)p; return CALL(int (*)(void *), DEV); }
static int c_ptr_stream(void *fn, const struct params *p) { return CALL(int (*)(void *, void *), DEV, p->stream); }
static int c_void(void *fn, const struct params *p) { (void)p; return CALL(int (*)(void)); }
static int c_stream(void *fn, const struct params *p) { return CALL(int (*)(void *), p->stream); }
static int c_stream_wait(void *fn, const struct params *p) { return CALL(int (*)(void *, void *, unsigned), p->stream, DEV, 0); }
static int c_launch(void *fn, const struct params *p)
{
	return CALL(int (*)(const void *, dim3, dim3, void **, size_t, void *), (void *)fake_kernel, p->grid, p->block, NULL, 0, p->stream);
}
static int c_launch_cfg(void *fn, const struct params *p)
{
	launch_config cfg = { .gridDim = p->grid, .blockDim = p->block, .stream = p->stream };

	return CALL(int (*)(const launch_config *, const void *, void **, void **), &cfg, (void *)fake_kernel, NULL, NULL);
}
static int c_memcpy(void *fn, const struct params *p) { return CALL(int (*)(void *, const void *, size_t, int), DEV, host_buf, p->size, p->kind); }
static int c_memcpy_async(void *fn, const struct params *p)
{
	return CALL(int (*)(void *, const void *, size_t, int, void *), DEV, host_buf, p->size, p->kind, p->stream);
}
/* 2D copies: width = size, height = 2. */
static int c_memcpy2d(void *fn, const struct params *p)
{
	return CALL(int (*)(void *, size_t, const void *, size_t, size_t, size_t, int), DEV, p->size, host_buf, p->size, p->size, 2, p->kind);
}
static int c_memcpy2d_async(void *fn, const struct params *p)
{
	return CALL(int (*)(void *, size_t, const void *, size_t, size_t, size_t, int, void *), DEV, p->size, host_buf, p->size, p->size, 2,
		    p->kind, p->stream);
}
static int c_peer(void *fn, const struct params *p) { return CALL(int (*)(void *, int, const void *, int, size_t), DEV, 1, DEV, 0, p->size); }
static int c_peer_async(void *fn, const struct params *p)
{
	return CALL(int (*)(void *, int, const void *, int, size_t, void *), DEV, 1, DEV, 0, p->size, p->stream);
}
static int c_memset(void *fn, const struct params *p) { return CALL(int (*)(void *, int, size_t), DEV, 0x5a, p->size); }
static int c_memset_async(void *fn, const struct params *p) { return CALL(int (*)(void *, int, size_t, void *), DEV, 0x5a, p->size, p->stream); }
static int c_cu_launch(void *fn, const struct params *p)
{
	return CALL(int (*)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **, void **),
		    (void *)fake_kernel, p->grid.x, p->grid.y, p->grid.z, p->block.x, p->block.y, p->block.z, 0, p->stream, NULL, NULL);
}
static int c_cu_copy(void *fn, const struct params *p) { return CALL(int (*)(void *, const void *, size_t), host_buf, host_buf, p->size); }
static int c_cu_copy_async(void *fn, const struct params *p) { return CALL(int (*)(void *, const void *, size_t, void *), host_buf, host_buf, p->size, p->stream); }
static int c_cu_malloc(void *fn, const struct params *p) { uint64_t d; return CALL(int (*)(uint64_t *, size_t), &d, p->size); }
static int c_cu_malloc_async(void *fn, const struct params *p) { uint64_t d; return CALL(int (*)(uint64_t *, size_t, void *), &d, p->size, p->stream); }
static int c_cu_malloc_flags(void *fn, const struct params *p) { uint64_t d; return CALL(int (*)(uint64_t *, size_t, unsigned), &d, p->size, 1); }
static int c_cu_free(void *fn, const struct params *p) { (void)p; return CALL(int (*)(uint64_t), (uint64_t)DEV); }
static int c_cu_memmap(void *fn, const struct params *p) { return CALL(int (*)(uint64_t, size_t, size_t, uint64_t, unsigned long long), (uint64_t)DEV, p->size, 0, 1, 0); }
static int c_cu_memcreate(void *fn, const struct params *p) { uint64_t h; return CALL(int (*)(uint64_t *, size_t, const void *, unsigned long long), &h, p->size, NULL, 0); }
static void *lib;
static int c_get_kernel(void *fn, const struct params *p) { void *h; (void)p; return CALL(int (*)(void **, const void *), &h, (void *)fake_kernel); }
static int c_cu_get(void *fn, const struct params *p) { void *h; (void)p; return CALL(int (*)(void **, void *, const char *), &h, DEV, "standin_kernel"); }
/* A CUkernel to derive from, made by the stand-in's unprobed helper so the plan's call counts stay exact. */
static int c_cu_kernel_function(void *fn, const struct params *p)
{
	void *(*make)(const char *) = (void *(*)(const char *))dlsym(lib, "standin_kernel");
	void *f;

	(void)p;
	return CALL(int (*)(void **, void *), &f, make ? make("standin_kernel") : DEV);
}

static const struct { const char *name; caller_fn call; } CALLERS[] = {
	{ "cudaMalloc", c_malloc }, { "cudaMallocAsync", c_malloc_async }, { "cudaMallocManaged", c_malloc_flags },
	{ "cudaMallocHost", c_malloc }, { "cudaHostAlloc", c_malloc_flags }, { "cudaFree", c_ptr },
	{ "cudaFreeAsync", c_ptr_stream }, { "cudaLaunchKernel", c_launch }, { "__cudaLaunchKernel", c_launch },
	{ "cudaLaunchKernelExC", c_launch_cfg }, { "cudaGraphLaunch", c_ptr_stream }, { "cudaMemcpy", c_memcpy },
	{ "cudaMemcpyAsync", c_memcpy_async }, { "cudaMemcpy2D", c_memcpy2d }, { "cudaMemcpy2DAsync", c_memcpy2d_async },
	{ "cudaMemcpyPeer", c_peer }, { "cudaMemcpyPeerAsync", c_peer_async }, { "cudaMemset", c_memset },
	{ "cudaMemsetAsync", c_memset_async }, { "cudaStreamSynchronize", c_stream }, { "cudaDeviceSynchronize", c_void },
	{ "cudaEventSynchronize", c_ptr }, { "cudaStreamWaitEvent", c_stream_wait }, { "cudaEventQuery", c_ptr },
	{ "cudaStreamQuery", c_stream }, { "cudaGetKernel", c_get_kernel }, { "__cudaGetKernel", c_get_kernel },
	{ "standin_empty", c_void },
	{ "cuLaunchKernel", c_cu_launch }, { "cuLaunchKernelEx", c_launch_cfg }, { "cuGraphLaunch", c_ptr_stream },
	{ "cuMemcpyHtoD_v2", c_cu_copy }, { "cuMemcpyDtoH_v2", c_cu_copy }, { "cuMemcpyDtoD_v2", c_cu_copy },
	{ "cuMemcpyHtoDAsync_v2", c_cu_copy_async }, { "cuMemcpyDtoHAsync_v2", c_cu_copy_async },
	{ "cuMemcpyDtoDAsync_v2", c_cu_copy_async }, { "cuMemAlloc_v2", c_cu_malloc }, { "cuMemAllocAsync", c_cu_malloc_async },
	{ "cuMemAllocManaged", c_cu_malloc_flags }, { "cuMemFree_v2", c_cu_free }, { "cuCtxSynchronize", c_void },
	{ "cuStreamSynchronize", c_stream }, { "cuEventSynchronize", c_ptr }, { "cuMemMap", c_cu_memmap },
	{ "cuMemCreate", c_cu_memcreate }, { "cuModuleGetFunction", c_cu_get }, { "cuLibraryGetKernel", c_cu_get },
	{ "cuKernelGetFunction", c_cu_kernel_function },
};

struct step {
	const char *name;
	void *fn;
	caller_fn call;
	long count;
	int first_ret;
};

static struct step plan[128];
static int nsteps, pin_cpu = -1, loop_forever, verbose;
static struct params params = { .size = 4096, .kind = 1, .stream = (void *)0x5000, .grid = { 4, 2, 3 }, .block = { 32, 2, 1 } };
static long total;
static double rate;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static caller_fn find_caller(const char *name)
{
	char base[128];
	size_t n = strlen(name);

	snprintf(base, sizeof(base), "%s", name);
	/* Per-thread-stream variants share their base function's signature. */
	if (n > 5 && (!strcmp(name + n - 5, "_ptsz") || !strcmp(name + n - 5, "_ptds")))
		base[n - 5] = 0;
	for (size_t i = 0; i < sizeof(CALLERS) / sizeof(CALLERS[0]); i++)
		if (!strcmp(CALLERS[i].name, base))
			return CALLERS[i].call;
	return NULL;
}

static long long mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *run_plan(void *arg)
{
	long long start = mono_ns(), calls = 0;

	(void)arg;
	if (pin_cpu >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(pin_cpu, &set);
		pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	}
	do {
		for (int i = 0; i < nsteps; i++) {
			for (long k = 0; k < plan[i].count; k++) {
				int rc;

				if (rate > 0)
					while (mono_ns() - start < (long long)(calls * 1e9 / rate))
						;
				calls++;
				rc = plan[i].call(plan[i].fn, &params);

				if (k == 0)
					plan[i].first_ret = rc;
				long done = __atomic_add_fetch(&total, 1, __ATOMIC_RELAXED);
				if (verbose) {
					pthread_mutex_lock(&out_lock);
					printf("done %ld\n", done);
					fflush(stdout);
					pthread_mutex_unlock(&out_lock);
				}
			}
		}
	} while (loop_forever);
	return NULL;
}

int main(int argc, char **argv)
{
	int opt, threads = 1, wait = 0;
	pthread_t tids[64];

	long long t0;

	while ((opt = getopt(argc, argv, "s:k:S:g:c:t:r:lwv")) != -1) {
		switch (opt) {
		case 's': params.size = strtoull(optarg, NULL, 0); break;
		case 'k': params.kind = atoi(optarg); break;
		case 'S': params.stream = (void *)strtoull(optarg, NULL, 0); break;
		case 'g': sscanf(optarg, "%u,%u,%u", &params.grid.x, &params.grid.y, &params.grid.z); break;
		case 'c': pin_cpu = atoi(optarg); break;
		case 't': threads = atoi(optarg); break;
		case 'l': loop_forever = 1; break;
		case 'w': wait = 1; break;
		case 'v': verbose = 1; break;
		case 'r': rate = atof(optarg); break;
		default: fprintf(stderr, "usage: %s [-s size] [-k kind] [-S stream] [-g x,y,z] [-c cpu] [-t threads] [-l] [-w] [-v] LIB NAME=COUNT...\n", argv[0]); return 2;
		}
	}
	if (optind >= argc || threads < 1 || threads > 64) {
		fprintf(stderr, "usage: %s [options] LIB NAME=COUNT...\n", argv[0]);
		return 2;
	}
	lib = dlopen(argv[optind], RTLD_NOW | RTLD_LOCAL);
	if (!lib) {
		fprintf(stderr, "cannot load %s: %s\n", argv[optind], dlerror());
		return 2;
	}
	for (int i = optind + 1; i < argc && nsteps < 128; i++) {
		char *eq = strchr(argv[i], '=');
		struct step *s = &plan[nsteps];

		if (!eq) {
			fprintf(stderr, "expected NAME=COUNT, got %s\n", argv[i]);
			return 2;
		}
		*eq = 0;
		s->name = argv[i];
		s->count = atol(eq + 1);
		s->call = find_caller(s->name);
		s->fn = dlsym(lib, s->name);
		if (!s->call || !s->fn) {
			fprintf(stderr, "%s: %s\n", s->name, s->fn ? "no caller for this signature" : "not exported by the library");
			return 2;
		}
		nsteps++;
	}
	printf("kernel %p\n", (void *)fake_kernel);
	if (wait) {
		char line[16];

		printf("ready %d\n", (int)getpid());
		fflush(stdout);
		if (!fgets(line, sizeof(line), stdin))
			return 3;
	}
	fflush(stdout);
	t0 = mono_ns();
	for (int t = 0; t < threads; t++)
		pthread_create(&tids[t], NULL, run_plan, NULL);
	for (int t = 0; t < threads; t++)
		pthread_join(tids[t], NULL);
	for (int i = 0; i < nsteps; i++)
		printf("ret %s %d\n", plan[i].name, plan[i].first_ret);
	printf("calls %ld\n", total);
	printf("elapsed_ns %lld\n", mono_ns() - t0);
	return 0;
}
