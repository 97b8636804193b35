"""Correlation and roles on hand-made traffic: scoping by connection, no timeout, cancels,
progress, errors, server-to-client requests, batches, de-duplication of both ends."""

from __future__ import annotations

import json

import numpy as np
from wire_fixtures import call_chunks

from whyprobe.mcpwire.message import C2S, S2C
from whyprobe.mcpwire.pipeline import WirePipeline
from whyprobe.events import PAYLOAD_DTYPE, PL_PIPE, PL_TCP, PL_TLS, PL_UNIX, PayloadKind

R, W = PayloadKind.READ, PayloadKind.WRITE
MIN = 60 * 10**9


def line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def req(i, method, **params):
    return {"jsonrpc": "2.0", "id": i, "method": method, "params": params}


def res(i, result=None):
    return {"jsonrpc": "2.0", "id": i, "result": result if result is not None else {}}


def send(pipe, ts, conn, pid, data, kind, flags=PL_PIPE, fd=3):
    out = []
    for h, d in call_chunks(ts, conn, pid, fd, data, kind, flags):
        out += pipe.feed(h, d)
    return out


def test_two_clients_same_ids_never_mispair_over_ten_minutes() -> None:
    """Two stdio servers, each traced; both clients use id 1; answers come 10 minutes later, crossed."""
    p = WirePipeline()
    a = send(p, 1, 11, 200, line(req(1, "tools/call", name="slow")), R)  # server A reads its stdin pipe 11
    b = send(p, 2, 21, 300, line(req(1, "tools/call", name="fast")), R)  # server B reads pipe 21
    rb = send(p, 3, 22, 300, line(res(1, {"content": [], "isError": True})), W)  # B answers on pipe 22
    ra = send(p, 10 * MIN, 12, 200, line(res(1, {"content": []})), W)  # A answers 10 minutes later on 12
    (a,), (b,), (rb,), (ra,) = a, b, rb, ra
    assert (ra.request, rb.request) == (a, b)
    assert (ra.latency_ns, rb.latency_ns) == (10 * MIN - 1, 1)
    assert (ra.tool_name, rb.tool_name) == ("slow", "fast")
    assert [(c.tool_name, c.server_pid, c.is_error) for c in p.tool_calls] == [("fast", 300, True), ("slow", 200, False)]
    assert a.direction == C2S and ra.direction == S2C and ra.sender_pid == 200


def test_same_ids_on_sockets_scoped_by_connection() -> None:
    p = WirePipeline()
    for conn, client in ((0xA, 100), (0xB, 101)):
        send(p, conn, conn, client, line(req(7, "tools/list")), W, PL_UNIX)
    (rb,) = send(p, 50, 0xB, 101, line(res(7, {"tools": []})), R, PL_UNIX)
    (ra,) = send(p, 60, 0xA, 100, line(res(7, {"tools": []})), R, PL_UNIX)
    assert (ra.request.connection, rb.request.connection) == ("unix:a", "unix:b")
    assert (ra.latency_ns, rb.latency_ns) == (60 - 0xA, 50 - 0xB)
    assert ra.transport == "unix" and ra.direction == S2C and ra.receiver_pid == 100


def test_client_only_pipes_link_by_pid_and_unanswered_stays_pending() -> None:
    p = WirePipeline()
    send(p, 1, 31, 100, line(req(1, "initialize", protocolVersion="2025-06-18", clientInfo={"name": "c"}, capabilities={})), W)
    send(p, 2, 32, 100, line(res(1, {"protocolVersion": "2025-06-18", "serverInfo": {"name": "s", "version": "9"}, "capabilities": {"tools": {}}})), R)
    send(p, 3, 31, 100, line(req(2, "tools/call", name="never")), W)
    assert p.sessions[0].server_info == {"name": "s", "version": "9"} and p.sessions[0].client_pid == 100
    assert [(m.jsonrpc_id, m.tool_name) for m in p.pending_requests()] == [("2", "never")]


def test_unlinked_pipes_pair_when_only_one_request_fits() -> None:
    """A client with two untraced servers: the pid rule cannot link; a unique pending id can."""
    p = WirePipeline()
    send(p, 1, 41, 100, line(req(1, "tools/list")), W)
    send(p, 2, 51, 100, line(req(2, "tools/list")), W)
    (r2,) = send(p, 3, 52, 100, line(res(2, {"tools": []})), R)
    (r1,) = send(p, 4, 42, 100, line(res(1, {"tools": []})), R)
    assert (r1.request.connection, r2.request.connection) == ("pipe:41", "pipe:51")


def test_link_pipes_api() -> None:
    p = WirePipeline()
    p.link_pipes(61, 62)
    p.link_pipes(71, 72)
    send(p, 1, 61, 100, line(req(1, "ping")), W)
    send(p, 2, 71, 100, line(req(1, "ping")), W)
    (r,) = send(p, 3, 72, 100, line(res(1)), R)
    assert r.request.connection == "pipe:71"


def test_cancel_progress_error_and_server_request_over_tcp() -> None:
    p = WirePipeline()
    tcp = lambda ts, pid, obj, kind: send(p, ts, 0x77, pid, line(obj), kind, PL_TCP)  # noqa: E731
    (call,) = tcp(1, 100, {"jsonrpc": "2.0", "id": "a", "method": "tools/call", "params": {"name": "t", "_meta": {"progressToken": 5}}}, W)
    (prog,) = tcp(2, 100, {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 5, "progress": 1}}, R)
    (samp,) = tcp(3, 100, req(9, "sampling/createMessage", maxTokens=10), R)
    (samp_r,) = tcp(4, 100, res(9, {"role": "assistant"}), W)
    (cancel,) = tcp(5, 100, {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "a"}}, W)
    (err,) = tcp(6, 100, {"jsonrpc": "2.0", "id": "a", "error": {"code": -32800, "message": "Request cancelled"}}, R)
    assert prog.request is call and call.progress == 1 and prog.direction == S2C
    assert (samp.direction, samp_r.direction, samp_r.request) == (S2C, C2S, samp)
    assert json.loads(samp.payload)["params"]["maxTokens"] == 10  # not a secret
    assert cancel.request is call and call.cancelled
    assert (err.kind, err.error_code, err.error_message, err.request) == ("error", -32800, "Request cancelled", call)
    assert p.tool_calls[0].is_error and err.to_row()["request_id"] == call.seq


def test_batch_request_and_response() -> None:
    p = WirePipeline()
    msgs = send(p, 1, 0x5, 100, json.dumps([req(1, "tools/list"), req(2, "prompts/list"), {"jsonrpc": "2.0", "method": "notifications/initialized"}]).encode() + b"\n", W, PL_UNIX)
    assert [(m.kind, m.method, m.batch) for m in msgs] == [("request", "tools/list", True), ("request", "prompts/list", True), ("notification", "notifications/initialized", True)]
    resp = send(p, 2, 0x5, 100, json.dumps([res(2), res(1, {"tools": []})]).encode() + b"\n", R, PL_UNIX)
    assert [(m.request.method, m.direction) for m in resp] == [("prompts/list", S2C), ("tools/list", S2C)]


def test_both_ends_reported_once_even_with_identical_messages() -> None:
    """The same notification twice in a row, seen by writer and reader: two messages, not four or one."""
    p = WirePipeline()
    note = line({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info"}})
    out = send(p, 1, 81, 200, note, W) + send(p, 2, 81, 200, note, W)
    out += send(p, 3, 81, 100, note + note, R)
    assert [(m.sender_pid, m.receiver_pid, m.recv_ts_ns) for m in out] == [(200, 100, 3), (200, 100, 3)]
    assert p.stats.duplicates == 2


def test_reader_first_then_writer_dedups_and_fills_sender() -> None:
    p = WirePipeline()
    (m,) = send(p, 5, 91, 100, line(req(1, "tools/list")), R)
    assert send(p, 6, 91, 200, line(req(1, "tools/list")), W) == []
    assert (m.sender_pid, m.receiver_pid, m.send_ts_ns, m.recv_ts_ns) == (200, 100, 6, 5)


def test_tls_connection_names_carry_pid_and_numpy_headers_work() -> None:
    p = WirePipeline(ts_offset_ns=1000)
    data = b"POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abcdefghijkl\r\nContent-Length: %d\r\n\r\n" % len(line(req(1, "tools/list")))
    data += line(req(1, "tools/list"))
    rec = np.zeros(1, PAYLOAD_DTYPE)[0]
    for f, v in dict(ts_ns=5, conn=0xDEAD, offset=0, pid=42, tid=43, fd=-1, len=len(data), total=len(data), kind=PayloadKind.SSL_WRITE, flags=PL_TLS).items():
        rec[f] = v
    (m,) = p.feed(rec, data)
    assert (m.connection, m.transport, m.ts_ns, m.sender_pid) == ("tls:42:dead", "https", 1005, 42)
    assert m.http["headers"]["authorization"] == "[REDACTED]"


def test_comm_and_cmdline_callbacks() -> None:
    p = WirePipeline(comm_of={100: "claude", 200: "mcp-time"}.get, cmdline_of=lambda pid: "uvx mcp-server-time")
    send(p, 1, 0x9, 100, line(req(1, "tools/list")), W, PL_UNIX)
    (r,) = send(p, 2, 0x9, 200, line(res(1, {"tools": [{"name": "now", "description": "d", "inputSchema": {}}]})), W, PL_UNIX)
    assert (r.sender_comm, r.receiver_comm) == ("mcp-time", "claude")
    assert [s.server for s in p.drain_snapshots()] == ["uvx mcp-server-time"]
