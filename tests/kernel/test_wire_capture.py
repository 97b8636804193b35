"""Wire capture under real eBPF: bytes, chunking, truncation, connection ids at both ends, TLS plaintext."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections import defaultdict

import pytest

from whyprobe.kernel.loader import ProbeSet
from whyprobe.kernel.ring import PayloadReader
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.wire import WireFamily
from whyprobe.events import PL_PIPE, PL_TCP, PL_TLS, PL_TRUNCATED, PL_UNIX, PayloadKind

pytestmark = pytest.mark.usefixtures("bpf_required")

MSG = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x","arguments":{"blob":"' + b"a" * 9000 + b'"}}}\n'


_SETS: dict[int, tuple] = {}


@pytest.fixture(scope="module", autouse=True)
def _close_probe_sets():
    yield
    for ps, _, reader in _SETS.values():
        reader.close()
        ps.close()
    _SETS.clear()


def _capture(fn, max_message_bytes: int = 1 << 20):
    """Run fn() with this process traced by the wire family; return payload (hdr, data) tuples.

    One loaded ProbeSet per cap is kept for the module: detaching costs ~1 s."""
    if max_message_bytes not in _SETS:
        ps = ProbeSet()
        fam = WireFamily(max_message_bytes=max_message_bytes)
        fam.attach(ps, TargetSpec(pids=[os.getpid()]))
        ps.add_targets([os.getpid()])
        _SETS[max_message_bytes] = (ps, fam, PayloadReader(ps.payloads_fd))
    ps, fam, reader = _SETS[max_message_bytes]
    reader.poll(0)
    fn(fam)
    return reader.poll(50)


def _messages(chunks, kind):
    """Reassemble per (conn, ts): each syscall's chunks in offset order."""
    calls = defaultdict(list)
    for hdr, data in chunks:
        if hdr["kind"] == kind:
            calls[(int(hdr["conn"]), int(hdr["ts_ns"]), int(hdr["tid"]))].append((int(hdr["offset"]), data, hdr))
    return {k: (b"".join(d for _, d, _ in sorted(v, key=lambda x: x[0])), v[0][2]) for k, v in calls.items()}


def test_pipe_bytes_arrive_whole_with_one_connection_id_at_both_ends() -> None:
    r, w = os.pipe()

    def go(_):
        os.write(w, MSG)
        assert os.read(r, len(MSG)) == MSG

    chunks = _capture(go)
    writes = _messages(chunks, PayloadKind.WRITE)
    reads = _messages(chunks, PayloadKind.READ)
    [(wkey, (wdata, whdr))] = [(k, v) for k, v in writes.items() if v[0] == MSG]
    [(rkey, (rdata, rhdr))] = [(k, v) for k, v in reads.items() if v[0] == MSG]
    assert wkey[0] == rkey[0] == os.fstat(r).st_ino  # the pipe inode, same for both ends
    assert whdr["flags"] & PL_PIPE and rhdr["flags"] & PL_PIPE
    assert whdr["total"] == len(MSG) and whdr["fd"] == w and rhdr["fd"] == r
    os.close(r)
    os.close(w)


def test_message_over_the_cap_is_truncated_and_flagged() -> None:
    r, w = os.pipe()

    def go(_):
        os.write(w, MSG)
        os.read(r, len(MSG))

    chunks = _capture(go, max_message_bytes=4096)
    writes = [v for v in _messages(chunks, PayloadKind.WRITE).values() if v[0].startswith(MSG[:20])]
    [(data, hdr)] = writes
    assert data == MSG[:4096]
    assert hdr["flags"] & PL_TRUNCATED and hdr["total"] == len(MSG)


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_socket_ends_share_a_connection_id(family: str) -> None:
    if family == "unix":
        a, b = socket.socketpair()
        flag = PL_UNIX
    else:
        srv = socket.create_server(("127.0.0.1", 0))
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
        srv.close()
        flag = PL_TCP

    def go(_):
        a.sendall(MSG)
        got = b""
        while len(got) < len(MSG):
            got += b.recv(65536)
        assert got == MSG

    chunks = _capture(go)
    conns = {int(h["conn"]) for h, _ in chunks if h["flags"] & flag}
    assert len(conns) == 1
    sent = [v for v in _messages(chunks, PayloadKind.WRITE).values() if v[1]["flags"] & flag]
    assert b"".join(v[0] for v in sent) == MSG
    a.close()
    b.close()


def test_tls_plaintext_is_captured_from_openssl(tls_cert) -> None:
    # GIVEN a TLS server and client in this process (Python's ssl module links libssl)
    cert, key = tls_cert
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    cctx = ssl.create_default_context(cafile=str(cert))
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    received = []

    def serve():
        conn, _ = srv.accept()
        with sctx.wrap_socket(conn, server_side=True) as s:
            got = b""
            while len(got) < len(MSG):
                got += s.recv(65536)
            received.append(got)
            s.sendall(b'{"jsonrpc":"2.0","id":7,"result":{}}\n')

    def go(fam):
        assert fam.tls_libraries, "no libssl found to probe"
        t = threading.Thread(target=serve)
        t.start()
        with cctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1") as c:
            c.sendall(MSG)
            c.recv(65536)
        t.join()

    chunks = _capture(go)
    srv.close()
    tls_writes = _messages(chunks, PayloadKind.SSL_WRITE)
    tls_reads = _messages(chunks, PayloadKind.SSL_READ)
    # THEN the plaintext request is seen at the client's SSL_write and the response at its SSL_read
    assert any(d == MSG for d, h in tls_writes.values() if h["flags"] & PL_TLS)
    assert any(d.startswith(b'{"jsonrpc":"2.0","id":7,"result"') for d, _ in tls_reads.values())
    assert received == [MSG]
