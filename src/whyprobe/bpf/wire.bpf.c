// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* MCP wire capture: the bytes enrolled processes move over pipes, unix and TCP
 * sockets (syscall tracepoints) and, for TLS, the plaintext at OpenSSL's
 * SSL_read/SSL_write. Bytes go to the payload ring in chunks of up to
 * WP_CHUNK_LEN, each sized to its content, up to `max_message_bytes` per call;
 * anything beyond is counted in `total` and
 * flagged WP_PL_TRUNCATED, never silently cut. The connection id is the same
 * at both ends (pipe inode, unix socket pair, sorted TCP 4-tuple), so user
 * space can report each message once. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define S_IFIFO 0010000
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define MAX_IOV 16
#define MAX_CHUNKS 1024 /* 4 MiB per call at most, whatever the cap */

const volatile __u64 max_message_bytes = 1 << 20;
/* Also enroll untraced processes whose traffic starts like JSON-RPC or HTTP. */
const volatile __u32 sniff = 0;

struct io_args {
	__u64 buf;     /* buffer, or user iovec array when iovcnt > 0 */
	__u32 iovcnt;
	__s32 fd;
	__u16 kind;    /* WP_PL_READ / WP_PL_WRITE / SSL kinds */
	__u16 pad;
	__u32 pad2;
	__u64 ssl;     /* SSL* for TLS */
	__u64 written; /* size_t* of SSL_*_ex */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct io_args);
} inflight SEC(".maps");

/* Separate from `inflight`: SSL_write itself makes write() syscalls on the same thread. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct io_args);
} ssl_inflight SEC(".maps");

/* tid -> SSL_do_handshake in flight (ssl). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct io_args);
} handshakes SEC(".maps");

/* TLS streams are named by their TCP connection, so both ends agree on the name and user space
 * reports each message once: every SSL* is bound to the socket it speaks over (ssl_conns).
 *
 * - Memory BIO (Python's ssl.SSLObject under asyncio/anyio: httpx, uvicorn): the process reads
 *   ciphertext from the socket, then hands those exact bytes to BIO_write on the SSL*'s read BIO.
 *   The first CIPHER_HEAD bytes of every TCP read are remembered (cipher_seen); BIO_write on a
 *   BIO that SSL_set_bio gave an SSL* looks them up: an exact binding, whatever the event loop
 *   ran in between.
 * - Otherwise the thread's last TCP read not yet claimed by an SSL call: with a socket BIO
 *   (blocking ssl sockets) the read inside SSL_do_handshake/SSL_read; with a BIO of the
 *   application's own (node's), the read that delivered the bytes just before, as the
 *   application feeds OpenSSL synchronously. Each read is claimed by the first SSL call after
 *   it, so an SSL* that had no read of its own yet is left unbound.
 * Every server and client reads (the handshake) before it sends application data, so the binding
 * exists before the first message. SSL_free forgets it (addresses are reused). */
#define CIPHER_HEAD 32

struct ssl_key {
	__u64 ptr; /* SSL* or BIO* */
	__u32 tgid;
	__u32 pad;
};

struct cipher_key {
	__u32 tgid;
	__u32 pad;
	__u8 head[CIPHER_HEAD];
};

struct tcp_read {
	__u64 conn;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ssl_key);
	__type(value, __u64);
} ssl_conns SEC(".maps");

/* read BIO -> SSL* (SSL_set_bio). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct ssl_key);
	__type(value, __u64);
} bio_ssl SEC(".maps");

/* (tgid, first bytes of a TCP read) -> TCP connection id. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct cipher_key);
	__type(value, __u64);
} cipher_seen SEC(".maps");

/* tid -> the thread's last TCP read. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct tcp_read);
} last_tcp_read SEC(".maps");

struct chunk_ctx {
	struct wp_payload hdr;
	__u64 base;     /* current buffer */
	__u64 avail;    /* bytes left in the current buffer */
	__u64 iov;      /* user iovec array, 0 = single buffer */
	__u32 iovcnt;
	__u32 iovidx;
	__u64 left;     /* bytes still to capture */
};

static __always_inline int emit_chunk(__u32 i, struct chunk_ctx *c)
{
	struct wp_payload_rec *p;
	__u64 n;

	if (c->avail == 0) {
		struct iovec v;

		/* Next iovec; an empty one costs one loop iteration. */
		if (!c->iov || c->iovidx >= c->iovcnt || c->iovidx >= MAX_IOV)
			return 1;
		if (bpf_probe_read_user(&v, sizeof(v), (void *)(c->iov + c->iovidx * sizeof(v))))
			return 1;
		c->iovidx++;
		c->base = (__u64)v.iov_base;
		c->avail = v.iov_len;
		return 0;
	}
	if (c->left == 0)
		return 1;
	n = c->avail < c->left ? c->avail : c->left;
	if (n > WP_CHUNK_LEN)
		n = WP_CHUNK_LEN;
	p = wp_payload_scratch();
	if (!p)
		return 1;
	p->hdr = c->hdr;
	p->hdr.len = n;
	if (bpf_probe_read_user(p->data, n, (void *)c->base) || !wp_output_payload(p))
		return 1;
	c->hdr.offset += n;
	c->base += n;
	c->avail -= n;
	c->left -= n;
	return c->left == 0;
}

static int chunk_cb(__u32 i, void *ctx)
{
	return emit_chunk(i, ctx);
}

/* Connection id and transport flag of fd, or 0 if it is not a pipe or socket. */
static __always_inline __u64 fd_conn(int fd, __u16 *transport)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct file **fds, *f = NULL;
	unsigned int max;
	umode_t mode;

	if (fd < 0)
		return 0;
	max = BPF_CORE_READ(task, files, fdt, max_fds);
	if ((unsigned int)fd >= max)
		return 0;
	fds = BPF_CORE_READ(task, files, fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return 0;
	mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) == S_IFIFO) {
		*transport = WP_PL_PIPE;
		return BPF_CORE_READ(f, f_inode, i_ino);
	}
	if ((mode & S_IFMT) == S_IFSOCK) {
		struct socket *sock = BPF_CORE_READ(f, private_data);
		struct sock *sk = BPF_CORE_READ(sock, sk);
		__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

		if (family == AF_UNIX) {
			__u64 a = (__u64)sk, b = (__u64)BPF_CORE_READ((struct unix_sock *)sk, peer);

			*transport = WP_PL_UNIX;
			return (b && b < a) ? b : a;
		}
		if (family == AF_INET || family == AF_INET6) {
			__u64 local, remote;
			__u32 lport = BPF_CORE_READ(sk, __sk_common.skc_num);
			__u32 rport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));

			if (family == AF_INET) {
				local = ((__u64)BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr) << 16) | lport;
				remote = ((__u64)BPF_CORE_READ(sk, __sk_common.skc_daddr) << 16) | rport;
			} else {
				local = ((__u64)BPF_CORE_READ(sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32[3]) << 16) | lport;
				remote = ((__u64)BPF_CORE_READ(sk, __sk_common.skc_v6_daddr.in6_u.u6_addr32[3]) << 16) | rport;
			}
			*transport = WP_PL_TCP;
			/* Same id at both ends: order the endpoints, keep the top bit for TCP. */
			return (local < remote ? (local * 0x9E3779B97F4A7C15ULL) ^ remote
					       : (remote * 0x9E3779B97F4A7C15ULL) ^ local) | (1ULL << 63);
		}
	}
	return 0;
}

static __always_inline bool looks_like_mcp(__u64 buf, __u64 iov, __u32 iovcnt)
{
	char head[6] = {};

	if (iov) {
		struct iovec v;

		if (bpf_probe_read_user(&v, sizeof(v), (void *)iov))
			return false;
		buf = (__u64)v.iov_base;
	}
	if (bpf_probe_read_user(head, sizeof(head), (void *)buf))
		return false;
	if (head[0] == '{' && head[1] == '"')
		return true;
	if (head[0] == 'P' && head[1] == 'O' && head[2] == 'S' && head[3] == 'T' && head[4] == ' ')
		return true;
	return head[0] == 'H' && head[1] == 'T' && head[2] == 'T' && head[3] == 'P' && head[4] == '/';
}

static __always_inline int io_enter(int fd, __u64 buf, __u32 iovcnt, __u16 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct io_args a = {};

	if (!sniff && !wp_traced(id >> 32))
		return 0;
	a.fd = fd;
	a.buf = buf;
	a.iovcnt = iovcnt;
	a.kind = kind;
	bpf_map_update_elem(&inflight, &id, &a, BPF_ANY);
	return 0;
}

static __always_inline void capture(struct io_args *a, __u64 id, __s64 ret, __u64 conn, __u16 transport)
{
	struct chunk_ctx c = {};

	c.hdr.ts_ns = bpf_ktime_get_ns();
	c.hdr.conn = conn;
	c.hdr.pid = id >> 32;
	c.hdr.tid = (__u32)id;
	c.hdr.fd = a->fd;
	c.hdr.total = ret;
	c.hdr.kind = a->kind;
	c.hdr.flags = transport;
	if ((__u64)ret > max_message_bytes) {
		c.hdr.flags |= WP_PL_TRUNCATED;
		c.left = max_message_bytes;
	} else {
		c.left = ret;
	}
	if (a->iovcnt) {
		c.iov = a->buf;
		c.iovcnt = a->iovcnt;
	} else {
		c.base = a->buf;
		c.avail = ret;
	}
	bpf_loop(MAX_CHUNKS, chunk_cb, &c, 0);
}

static __always_inline void note_tcp_read(struct io_args *a, __u64 id, __s64 ret, __u64 conn)
{
	struct tcp_read r = {.conn = conn};
	struct cipher_key k = {.tgid = id >> 32};
	__u32 tid = (__u32)id;
	__u64 buf = a->buf;

	bpf_map_update_elem(&last_tcp_read, &tid, &r, BPF_ANY);
	if (ret < CIPHER_HEAD)
		return;
	if (a->iovcnt) {
		struct iovec v;

		if (bpf_probe_read_user(&v, sizeof(v), (void *)a->buf) || v.iov_len < CIPHER_HEAD)
			return;
		buf = (__u64)v.iov_base;
	}
	if (!bpf_probe_read_user(k.head, sizeof(k.head), (void *)buf))
		bpf_map_update_elem(&cipher_seen, &k, &conn, BPF_ANY);
}

/* The binding the thread's last TCP read proves for an SSL* that has none. Every SSL call
 * claims that read (ssl_exit): a read names at most one SSL*, the first one used after it. */
static __always_inline __u64 *bind_by_thread(struct ssl_key *k, __u64 id)
{
	__u32 tid = (__u32)id;
	struct tcp_read *r;
	__u64 *tcp = bpf_map_lookup_elem(&ssl_conns, k);

	if (tcp)
		return tcp;
	r = bpf_map_lookup_elem(&last_tcp_read, &tid);
	if (!r)
		return NULL;
	bpf_map_update_elem(&ssl_conns, k, &r->conn, BPF_ANY);
	return bpf_map_lookup_elem(&ssl_conns, k);
}

static __always_inline int io_exit(__s64 ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	struct io_args *a;
	__u16 transport = 0;
	__u64 conn;

	a = bpf_map_lookup_elem(&inflight, &id);
	if (!a)
		return 0;
	if (ret <= 0)
		goto out;
	conn = fd_conn(a->fd, &transport);
	if (!conn)
		goto out;
	if (transport == WP_PL_TCP && a->kind == WP_PL_READ)
		note_tcp_read(a, id, ret, conn);
	if (!wp_traced(tgid)) {
		if (!looks_like_mcp(a->buf, a->iovcnt ? a->buf : 0, a->iovcnt))
			goto out;
		wp_set_traced(tgid, 1);
		transport |= WP_PL_SNIFFED;
	}
	capture(a, id, ret, conn, transport);
out:
	bpf_map_delete_elem(&inflight, &id);
	return 0;
}

SEC("tp/syscalls/sys_enter_read")
int handle_enter_read(struct trace_event_raw_sys_enter *ctx)
{
	return io_enter(ctx->args[0], ctx->args[1], 0, WP_PL_READ);
}

SEC("tp/syscalls/sys_enter_write")
int handle_enter_write(struct trace_event_raw_sys_enter *ctx)
{
	return io_enter(ctx->args[0], ctx->args[1], 0, WP_PL_WRITE);
}

SEC("tp/syscalls/sys_enter_readv")
int handle_enter_readv(struct trace_event_raw_sys_enter *ctx)
{
	return io_enter(ctx->args[0], ctx->args[1], ctx->args[2], WP_PL_READ);
}

SEC("tp/syscalls/sys_enter_writev")
int handle_enter_writev(struct trace_event_raw_sys_enter *ctx)
{
	return io_enter(ctx->args[0], ctx->args[1], ctx->args[2], WP_PL_WRITE);
}

SEC("tp/syscalls/sys_enter_sendto")
int handle_enter_sendto(struct trace_event_raw_sys_enter *ctx)
{
	return io_enter(ctx->args[0], ctx->args[1], 0, WP_PL_WRITE);
}

SEC("tp/syscalls/sys_enter_recvfrom")
int handle_enter_recvfrom(struct trace_event_raw_sys_enter *ctx)
{
	return io_enter(ctx->args[0], ctx->args[1], 0, WP_PL_READ);
}

static __always_inline int msg_enter(struct trace_event_raw_sys_enter *ctx, __u16 kind)
{
	struct user_msghdr m;

	if (bpf_probe_read_user(&m, sizeof(m), (void *)ctx->args[1]))
		return 0;
	return io_enter(ctx->args[0], (__u64)m.msg_iov, m.msg_iovlen, kind);
}

SEC("tp/syscalls/sys_enter_sendmsg")
int handle_enter_sendmsg(struct trace_event_raw_sys_enter *ctx)
{
	return msg_enter(ctx, WP_PL_WRITE);
}

SEC("tp/syscalls/sys_enter_recvmsg")
int handle_enter_recvmsg(struct trace_event_raw_sys_enter *ctx)
{
	return msg_enter(ctx, WP_PL_READ);
}

#define EXIT(name)                                                   \
	SEC("tp/syscalls/sys_exit_" #name)                           \
	int handle_exit_##name(struct trace_event_raw_sys_exit *ctx) \
	{                                                            \
		return io_exit(ctx->ret);                            \
	}

EXIT(read)
EXIT(write)
EXIT(readv)
EXIT(writev)
EXIT(sendto)
EXIT(recvfrom)
EXIT(sendmsg)
EXIT(recvmsg)

/* TLS: plaintext at the OpenSSL API, both client and server side. */
static __always_inline int ssl_enter(__u64 ssl, __u64 buf, __u64 written, __u16 kind)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct io_args a = {};

	if (!wp_traced(id >> 32))
		return 0;
	a.ssl = ssl;
	a.buf = buf;
	a.written = written;
	a.fd = -1;
	a.kind = kind;
	bpf_map_update_elem(&ssl_inflight, &id, &a, BPF_ANY);
	return 0;
}

static __always_inline int ssl_exit(__s64 ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct io_args *a = bpf_map_lookup_elem(&ssl_inflight, &id);
	struct ssl_key k = {.tgid = id >> 32};
	__u32 tid = (__u32)id;
	__u64 *tcp = NULL;

	if (!a)
		return 0;
	k.ptr = a->ssl;
	if (a->written) {
		__u64 n = 0;

		/* _ex variants return 1 on success and store the byte count. */
		if (ret == 1 && !bpf_probe_read_user(&n, sizeof(n), (void *)a->written))
			ret = n;
		else
			ret = 0;
	}
	/* Whatever the call returns: node has no SSL_do_handshake and no BIO_write (its BIO is
	 * its own); the handshake ends inside whichever SSL_read or SSL_write runs right after the
	 * read that brought the server's Finished (node cycles one connection at a time: pending
	 * writes, then reads). Claimed, that read cannot name a later, unrelated SSL* (a new
	 * connection's ClientHello comes out of an SSL call too, before any read of its own). */
	tcp = bind_by_thread(&k, id);
	bpf_map_delete_elem(&last_tcp_read, &tid);
	/* WP_PL_TLS|WP_PL_TCP: conn is the TCP connection id; WP_PL_TLS alone: the SSL*. */
	if (ret > 0 && tcp)
		capture(a, id, ret, *tcp, WP_PL_TLS | WP_PL_TCP);
	else if (ret > 0)
		capture(a, id, ret, a->ssl, WP_PL_TLS);
	bpf_map_delete_elem(&ssl_inflight, &id);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(handle_ssl_write, void *ssl, void *buf, int num)
{
	return ssl_enter((__u64)ssl, (__u64)buf, 0, WP_PL_SSL_WRITE);
}

SEC("uprobe")
int BPF_KPROBE(handle_ssl_read, void *ssl, void *buf, int num)
{
	return ssl_enter((__u64)ssl, (__u64)buf, 0, WP_PL_SSL_READ);
}

SEC("uprobe")
int BPF_KPROBE(handle_ssl_write_ex, void *ssl, void *buf, size_t num, size_t *written)
{
	return ssl_enter((__u64)ssl, (__u64)buf, (__u64)written, WP_PL_SSL_WRITE);
}

SEC("uprobe")
int BPF_KPROBE(handle_ssl_read_ex, void *ssl, void *buf, size_t num, size_t *readbytes)
{
	return ssl_enter((__u64)ssl, (__u64)buf, (__u64)readbytes, WP_PL_SSL_READ);
}

SEC("uretprobe")
int BPF_KRETPROBE(handle_ssl_ret, int ret)
{
	return ssl_exit(ret);
}

SEC("uprobe")
int BPF_KPROBE(handle_ssl_handshake, void *ssl)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct io_args a = {};

	if (!wp_traced(id >> 32))
		return 0;
	a.ssl = (__u64)ssl;
	bpf_map_update_elem(&handshakes, &id, &a, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(handle_ssl_handshake_ret, int ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct io_args *a = bpf_map_lookup_elem(&handshakes, &id);

	if (!a)
		return 0;
	if (ret == 1) {
		struct ssl_key k = {.ptr = a->ssl, .tgid = id >> 32};

		bind_by_thread(&k, id);
	}
	bpf_map_delete_elem(&last_tcp_read, &tid);
	bpf_map_delete_elem(&handshakes, &id);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(handle_ssl_set_bio, void *ssl, void *rbio, void *wbio)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct ssl_key k = {.ptr = (__u64)rbio, .tgid = id >> 32};
	__u64 p = (__u64)ssl;

	if (!rbio || !wp_traced(id >> 32))
		return 0;
	bpf_map_update_elem(&bio_ssl, &k, &p, BPF_ANY);
	return 0;
}

/* Ciphertext going into an SSL*'s read BIO: the TCP read it came from names the connection. */
SEC("uprobe")
int BPF_KPROBE(handle_bio_write, void *bio, const void *data, int dlen)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct ssl_key bk = {.ptr = (__u64)bio, .tgid = id >> 32};
	struct cipher_key ck = {.tgid = id >> 32};
	__u64 *ssl, *tcp;

	if (dlen < CIPHER_HEAD)
		return 0;
	ssl = bpf_map_lookup_elem(&bio_ssl, &bk);
	if (!ssl || bpf_probe_read_user(ck.head, sizeof(ck.head), data))
		return 0;
	tcp = bpf_map_lookup_elem(&cipher_seen, &ck);
	if (tcp) {
		struct ssl_key k = {.ptr = *ssl, .tgid = id >> 32};

		bpf_map_update_elem(&ssl_conns, &k, tcp, BPF_ANY);
	}
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(handle_ssl_free, void *ssl)
{
	struct ssl_key k = {.ptr = (__u64)ssl, .tgid = bpf_get_current_pid_tgid() >> 32};

	bpf_map_delete_elem(&ssl_conns, &k);
	return 0;
}
