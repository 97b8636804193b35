"""Real bytes from the mcp SDK (client and MCPServer, stdio and streamable HTTP) through the wire
pipeline, split at random call boundaries, with one or both ends traced."""

from __future__ import annotations

import random

import pytest
from wire_fixtures import CLIENT_PID, SERVER_PID, record_http, record_stdio, to_chunks, wire_messages

from whyprobe.mcpwire.message import C2S, S2C
from whyprobe.mcpwire.pipeline import WirePipeline


@pytest.fixture(scope="module")
def stdio_legacy():
    return record_stdio("legacy")


@pytest.fixture(scope="module")
def stdio_modern():
    return record_stdio("auto")


@pytest.fixture(scope="module")
def http_legacy():
    return record_http()


def run(chunks):
    pipe = WirePipeline()
    msgs = []
    for header, data in chunks:
        msgs += pipe.feed(header, data)
    msgs += pipe.flush()
    return pipe, msgs


def key(m):
    return (m.direction, m.jsonrpc_id, m.kind, m.method if m.kind != "response" else None)


def expected_keys(records):
    out = []
    for w in wire_messages(records):
        d = C2S if w["dir"] == "c2s" else S2C
        rid = None if w.get("id") is None else str(w["id"])
        kind = "request" if "method" in w and rid else "notification" if "method" in w else "error" if "error" in w else "response"
        out.append((d, rid, kind, w.get("method")))
    return sorted(out, key=str)


def check_pairs(msgs, client_pid, server_pid):
    by_seq = {m.seq: m for m in msgs}
    responses = [m for m in msgs if m.kind in ("response", "error")]
    assert responses and all(m.request is not None for m in responses)
    for r in responses:
        req = by_seq[r.request.seq]
        assert (req.jsonrpc_id, req.direction, r.direction) == (r.jsonrpc_id, C2S, S2C)
        assert r.method == req.method and r.latency_ns > 0
        assert (req.sender_pid, r.receiver_pid) == (client_pid, client_pid)
        assert (req.receiver_pid, r.sender_pid) == (server_pid, server_pid)


@pytest.mark.parametrize("ends", [(True, True), (True, False), (False, True)], ids=["both", "client", "server"])
@pytest.mark.parametrize("seed", [1, 2])
def test_stdio_legacy_every_message_once_and_paired(stdio_legacy, ends, seed) -> None:
    client, server = ends
    pipe, msgs = run(to_chunks(stdio_legacy, random.Random(seed), client=client, server=server))
    want = expected_keys(stdio_legacy)
    assert sorted((key(m) for m in msgs), key=str) == sorted(
        [(d, rid, k, None if k == "response" else m) for d, rid, k, m in want], key=str)
    assert [m.seq for m in msgs] == list(range(1, len(msgs) + 1))
    assert pipe.stats.duplicates == (len(msgs) if client and server else 0)
    check_pairs(msgs, CLIENT_PID if client else 0, SERVER_PID if server else 0)
    assert all(m.transport == "stdio" for m in msgs)

    calls = pipe.drain_tool_calls()
    assert [(c.tool_name, c.is_error) for c in calls] == [("add", False), ("echo", False), ("fail", True)]
    assert all(c.ended_at > c.started_at for c in calls)
    assert all(c.server_pid == (SERVER_PID if server else 0) for c in calls)
    if server:  # the server's own read/write times
        assert all(c.started_at == c.request.recv_ts_ns and c.ended_at == c.response.send_ts_ns for c in calls)
    assert pipe.drain_tool_calls() == []

    (session,) = pipe.sessions
    assert session.method == "initialize" and session.protocol_version == "2025-11-25"
    assert session.server_info == {"name": "wire-test-server", "version": "1.2.3"}
    assert session.client_info["name"] == "mcp" and session.client_capabilities == {}
    assert "tools" in session.server_capabilities

    snaps = pipe.drain_snapshots()
    assert [(s.server, s.tool_name) for s in snaps] == [("wire-test-server 1.2.3", n) for n in ("add", "echo", "fail")]
    assert snaps[0].description == "Add two integers." and '"required":["a","b"]' in snaps[0].input_schema
    big = next(m for m in msgs if m.tool_name == "echo" and m.kind == "response")
    assert big.size > 3 * 4096 and not big.truncated


def test_stdio_modern_discover_handshake(stdio_modern) -> None:
    pipe, msgs = run(to_chunks(stdio_modern, random.Random(3)))
    assert len(msgs) == len(wire_messages(stdio_modern))
    check_pairs(msgs, CLIENT_PID, SERVER_PID)
    (session,) = pipe.sessions
    assert session.method == "server/discover" and session.protocol_version == "2026-07-28"
    assert session.server_info == {"name": "wire-test-server", "version": "1.2.3"}
    assert session.client_info == {"name": "mcp", "version": "0.1.0"}
    assert {s.server for s in pipe.drain_snapshots()} == {"wire-test-server 1.2.3"}


@pytest.mark.parametrize("ends", [(True, True), (True, False), (False, True)], ids=["both", "client", "server"])
def test_streamable_http_sse_sessions(http_legacy, ends) -> None:
    client, server = ends
    pipe, msgs = run(to_chunks(http_legacy, random.Random(4), client=client, server=server, transport="tcp"))
    kinds = [(m.direction, m.kind, m.method) for m in msgs]
    assert kinds == [
        (C2S, "request", "initialize"), (S2C, "response", "initialize"),
        (C2S, "notification", "notifications/initialized"),
        (C2S, "request", "tools/list"), (S2C, "response", "tools/list"),
        *[x for _ in range(3) for x in ((C2S, "request", "tools/call"), (S2C, "response", "tools/call"))],
    ]
    check_pairs(msgs, CLIENT_PID if client else 0, SERVER_PID if server else 0)
    assert all(m.transport == "http" for m in msgs)
    sid = pipe.sessions[0].session_id
    assert sid and len(sid) == 32
    assert [m.session_id for m in msgs[1:]] == [sid] * (len(msgs) - 1)  # initialize itself has none yet
    assert msgs[1].http["status"] == 200 and msgs[0].http["request"] == "POST /mcp"
    assert [(c.tool_name, c.is_error) for c in pipe.tool_calls] == [("add", False), ("echo", False), ("fail", True)]
