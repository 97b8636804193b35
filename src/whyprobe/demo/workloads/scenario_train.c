// SPDX-License-Identifier: Apache-2.0
/* A training loop on a CUDA runtime (normally the stand-in libcudart), shaped
 * by options into the `whyprobe demo` scenarios. Built as `train_loop`.
 *
 *   train_loop [options] LIB
 *   -d SEC      run this long (default 4)
 *   -n N        kernel launches per step (default 8); every step ends with cudaDeviceSynchronize
 *   -B K:M      every K-th step launches M kernels instead (a bigger batch)
 *   -F K:X      every K-th launch costs X times the base launch time (the stand-in's
 *               STANDIN_LAUNCH_NS, set through its standin_control())
 *   -c CPU      pin the training thread (and a hog) to this CPU
 *   -i FILE:MS  after each step, MS ms of synchronous O_DIRECT reads of FILE, with a
 *               4 KiB write + fdatasync every 8 reads (checkpoint/log I/O on the hot thread)
 *   -l W:MS     W loader threads ("loader-N"), each spending MS ms of CPU per batch;
 *               every step first takes one batch (blocking when none is ready)
 *   -H          instead: be a CPU hog named "cpu-hog" (spin until killed; pinned with -c)
 *   -w          print "ready PID" and wait for a line on stdin before starting
 * At the end prints "steps N", "launches N" and "elapsed_ns NS". */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

typedef struct { unsigned x, y, z; } dim3;
typedef int (*launch_fn)(const void *, dim3, dim3, void **, size_t, void *);
typedef int (*sync_fn)(void);
typedef int (*control_fn)(const char *, long long);

#define IO_CHUNK (256 << 10)
#define PREFETCH 2

static double duration_s = 4;
static long per_step = 8, burst_every, burst_launches, heavy_every, heavy_factor, io_ms, loaders, loader_ms;
static int pin_cpu = -1;
static const char *io_file;

static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_avail = PTHREAD_COND_INITIALIZER, q_space = PTHREAD_COND_INITIALIZER;
static int batches, stopping;

static void kernel_body(void) {}

static long long mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void spin_ns(long long ns)
{
	long long end = mono_ns() + ns;

	while (mono_ns() < end)
		;
}

static void pin(void)
{
	cpu_set_t set;

	if (pin_cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(pin_cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* A data-loading worker: CPU work per batch, then hand it over (at most PREFETCH waiting). */
static void *loader(void *arg)
{
	char name[16];

	snprintf(name, sizeof(name), "loader-%ld", (long)(intptr_t)arg);
	pthread_setname_np(pthread_self(), name);
	for (;;) {
		spin_ns(loader_ms * 1000000LL);
		pthread_mutex_lock(&q_lock);
		while (batches >= PREFETCH && !stopping)
			pthread_cond_wait(&q_space, &q_lock);
		if (stopping) {
			pthread_mutex_unlock(&q_lock);
			return NULL;
		}
		batches++;
		pthread_cond_signal(&q_avail);
		pthread_mutex_unlock(&q_lock);
	}
}

static void next_batch(void)
{
	pthread_mutex_lock(&q_lock);
	while (batches == 0)
		pthread_cond_wait(&q_avail, &q_lock);
	batches--;
	pthread_cond_signal(&q_space);
	pthread_mutex_unlock(&q_lock);
}

/* Synchronous reads straight from the disk (O_DIRECT: no page cache to hide them). */
static void io_stall(int rfd, int wfd, void *buf, off_t file_size)
{
	long long end = mono_ns() + io_ms * 1000000LL;
	static off_t pos;

	for (int i = 0; mono_ns() < end; i++) {
		if (pread(rfd, buf, IO_CHUNK, pos) <= 0)
			pos = 0;
		pos = (pos + IO_CHUNK) % (file_size - IO_CHUNK + 1) / 4096 * 4096;
		if (i % 8 == 7 && pwrite(wfd, buf, 4096, 0) == 4096)
			fdatasync(wfd);
	}
}

static int parse_pair(const char *s, long *a, long *b)
{
	return sscanf(s, "%ld:%ld", a, b) == 2 && *a > 0 && *b >= 0 ? 0 : -1;
}

static __attribute__((noreturn)) int hog(void)
{
	prctl(PR_SET_NAME, "cpu-hog");
	pin();
	for (;;)
		spin_ns(1000000);
}

int main(int argc, char **argv)
{
	int opt, wait = 0, be_hog = 0, rfd = -1, wfd = -1;
	long steps = 0, launches = 0;
	long long base_launch_ns, t0, stop_at;
	char *colon;
	void *lib, *io_buf = NULL;
	off_t io_size = 0;
	pthread_t workers[16];
	launch_fn launch;
	sync_fn sync;
	control_fn control;

	while ((opt = getopt(argc, argv, "d:n:B:F:c:i:l:Hw")) != -1) {
		switch (opt) {
		case 'd': duration_s = atof(optarg); break;
		case 'n': per_step = atol(optarg); break;
		case 'B': if (parse_pair(optarg, &burst_every, &burst_launches)) goto usage; break;
		case 'F': if (parse_pair(optarg, &heavy_every, &heavy_factor)) goto usage; break;
		case 'c': pin_cpu = atoi(optarg); break;
		case 'i':
			colon = strrchr(optarg, ':');
			if (!colon)
				goto usage;
			*colon = 0;
			io_file = optarg;
			io_ms = atol(colon + 1);
			break;
		case 'l': if (parse_pair(optarg, &loaders, &loader_ms) || loaders > 16) goto usage; break;
		case 'H': be_hog = 1; break;
		case 'w': wait = 1; break;
		default: goto usage;
		}
	}
	if (be_hog)
		return hog();
	if (optind != argc - 1)
		goto usage;
	lib = dlopen(argv[optind], RTLD_NOW | RTLD_LOCAL);
	if (!lib) {
		fprintf(stderr, "cannot load %s: %s\n", argv[optind], dlerror());
		return 2;
	}
	launch = (launch_fn)dlsym(lib, "cudaLaunchKernel");
	sync = (sync_fn)dlsym(lib, "cudaDeviceSynchronize");
	control = (control_fn)dlsym(lib, "standin_control");
	if (!launch || !sync) {
		fprintf(stderr, "%s does not export cudaLaunchKernel and cudaDeviceSynchronize\n", argv[optind]);
		return 2;
	}
	if (heavy_every && !control) {
		fprintf(stderr, "-F needs the stand-in runtime (standin_control)\n");
		return 2;
	}
	base_launch_ns = getenv("STANDIN_LAUNCH_NS") ? atoll(getenv("STANDIN_LAUNCH_NS")) : 0;
	if (io_file) {
		rfd = open(io_file, O_RDONLY | O_DIRECT);
		wfd = open(io_file, O_WRONLY);
		io_size = rfd >= 0 ? lseek(rfd, 0, SEEK_END) : 0;
		if (rfd < 0 || wfd < 0 || io_size < IO_CHUNK || posix_memalign(&io_buf, 4096, IO_CHUNK)) {
			fprintf(stderr, "cannot use %s for O_DIRECT reads of %d bytes\n", io_file, IO_CHUNK);
			return 2;
		}
	}
	if (wait) {
		char line[16];

		printf("ready %d\n", (int)getpid());
		fflush(stdout);
		if (!fgets(line, sizeof(line), stdin))
			return 3;
	}
	for (long w = 0; w < loaders; w++)
		pthread_create(&workers[w], NULL, loader, (void *)(intptr_t)w);
	pin(); /* after the loaders: threads inherit their creator's affinity */
	t0 = mono_ns();
	stop_at = t0 + (long long)(duration_s * 1e9);
	while (mono_ns() < stop_at) {
		long n = burst_every && (steps + 1) % burst_every == 0 ? burst_launches : per_step;

		if (loaders)
			next_batch();
		for (long k = 0; k < n; k++) {
			int heavy = heavy_every && (launches + 1) % heavy_every == 0;

			if (heavy)
				control("launch_ns", base_launch_ns * heavy_factor);
			launch((const void *)kernel_body, (dim3){ 64, 1, 1 }, (dim3){ 128, 1, 1 }, NULL, 0, NULL);
			if (heavy)
				control("launch_ns", base_launch_ns);
			launches++;
		}
		sync();
		if (io_file)
			io_stall(rfd, wfd, io_buf, io_size);
		steps++;
	}
	if (loaders) {
		pthread_mutex_lock(&q_lock);
		stopping = 1;
		pthread_cond_broadcast(&q_space);
		pthread_mutex_unlock(&q_lock);
		for (long w = 0; w < loaders; w++)
			pthread_join(workers[w], NULL);
	}
	printf("steps %ld\nlaunches %ld\nelapsed_ns %lld\n", steps, launches, mono_ns() - t0);
	return 0;
usage:
	fprintf(stderr, "usage: %s [-d sec] [-n launches] [-B k:m] [-F k:x] [-c cpu] [-i file:ms] [-l workers:ms] [-H] [-w] LIB\n", argv[0]);
	return 2;
}
