"""`whyprobe spy` on streamable HTTP, plain and TLS, with both ends traced: the SDK server under
uvicorn (TLS with a self-signed certificate made here) and the SDK client (httpx trusting it), 30
tool calls each, in one traced session. Every message is reported once, with both pids, and
matches the client's own view; responses come as SSE; TLS plaintext comes from the OpenSSL
probes and is named by its TCP connection, so the two processes' SSL* don't report it twice."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import sqlite3
import time

import pytest
from spy_peers import HERE, PY, jsonl

from whyprobe.commands import main

pytestmark = pytest.mark.usefixtures("bpf_required")

CALLS = 30
BIG = 200_000  # the last call's argument: many TLS records, read back in many SSL_read calls
PAIR = [PY, str(HERE / "spy_http_pair.py")]


@pytest.fixture(scope="module")
def spied(tmp_path_factory, tls_cert):
    d = tmp_path_factory.mktemp("spyhttp")
    cert, key = (str(p) for p in tls_cert)
    script = (
        shlex.join([*PAIR, str(d / "ref-http.json"), str(CALLS), str(BIG)])
        + " && " + shlex.join([*PAIR, str(d / "ref-https.json"), str(CALLS), str(BIG), cert, key])
    )
    t0 = time.time_ns()
    out = io.StringIO()  # capsys is function-scoped; this fixture serves the module
    with contextlib.redirect_stdout(out):
        rc = main(["spy", "--json", "--out", str(d / "s.db"), "--jsonl", str(d / "s.jsonl"), "--cmd", "--", "sh", "-c", script])
    assert rc == 0
    wall = time.time_ns() - t0
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    msgs = jsonl(d / "s.jsonl")
    refs = {t: json.loads((d / f"ref-{t}.json").read_text()) for t in ("http", "https")}
    return d, summary, msgs, refs, wall


@pytest.fixture(params=["http", "https"])
def transport(request):
    return request.param


def test_one_session_per_transport_with_both_pids(spied) -> None:
    _, summary, _, _, _ = spied
    sessions = {s["transport"]: s for s in summary["sessions"]}
    assert sorted(sessions) == ["http", "https"] and len(summary["sessions"]) == 2
    for s in sessions.values():
        assert s["server"] == "spy-test-server 1.0.0" and s["protocol_version"]
        assert s["client_pid"] > 0 and s["server_pid"] > 0 and s["client_pid"] != s["server_pid"]
    assert any(lib.split("/")[-1].startswith("libssl.so") for lib in summary["tls_libraries"])
    assert summary["command_exit_status"] == 0 and summary["dropped"] == 0 and summary["lost_bytes"] == 0


def test_every_message_once_in_client_order(spied, transport) -> None:
    _, summary, msgs, refs, _ = spied
    mine = [m for m in msgs if m["transport"] == transport]
    # initialize + tools/list + N calls, each answered, and the initialized notification.
    assert [(m["kind"], m["method"]) for m in mine if m["kind"] != "response"] == (
        [("request", "initialize"), ("notification", "notifications/initialized"), ("request", "tools/list")]
        + [("request", "tools/call")] * CALLS
    )
    assert len([m for m in mine if m["kind"] == "response"]) == CALLS + 2
    assert len({(m["connection"], m["jsonrpc_id"], m["kind"]) for m in mine}) == len(mine)
    calls = [m for m in mine if m["kind"] == "request" and m["method"] == "tools/call"]
    want = [r["tool"] for r in refs[transport] if r["method"] == "tools/call"]
    assert [m["tool_name"] for m in calls] == want
    assert [m["payload"]["params"]["arguments"] for m in calls[:-1]] == [{"a": i, "b": 1} for i in range(CALLS - 1)]
    assert calls[-1]["size"] > BIG
    assert summary["messages"] == len(msgs) == 2 * (2 * CALLS + 5)


def test_responses_pair_with_their_requests_and_match_client_results(spied, transport) -> None:
    _, summary, msgs, refs, wall = spied
    [session] = [s for s in summary["sessions"] if s["transport"] == transport]
    client, server = session["client_pid"], session["server_pid"]
    by_id = {m["id"]: m for m in msgs}
    mine = [m for m in msgs if m["transport"] == transport]
    results = []
    for r in (m for m in mine if m["kind"] in ("response", "error")):
        q = by_id[r["request_id"]]
        assert (q["jsonrpc_id"], q["method"], q["connection"]) == (r["jsonrpc_id"], r["method"], r["connection"])
        assert (q["direction"], r["direction"]) == ("client->server", "server->client")
        assert (q["sender_pid"], q["receiver_pid"], r["sender_pid"], r["receiver_pid"]) == (client, server, server, client)
        assert 0 < r["latency_ns"] < wall
        if q["method"] == "tools/call":
            results.append(r["payload"]["result"]["structuredContent"])
    assert results == [r["result"] for r in refs[transport] if r["method"] == "tools/call"]
    assert results[-1] == {"result": BIG}
    assert all((m["sender_pid"], m["receiver_pid"]) in ((client, server), (server, client)) for m in mine)


def test_responses_are_server_sent_events(spied, transport) -> None:
    _, _, msgs, _, _ = spied
    mine = [m for m in msgs if m["transport"] == transport]
    types = {(m["kind"], m["http"]["headers"]["content-type"].split(";")[0]) for m in mine}
    assert types == {("request", "application/json"), ("notification", "application/json"), ("response", "text/event-stream")}
    assert {m["http"]["request"] for m in mine if m["kind"] != "response"} == {"POST /mcp"}


def test_tls_is_named_by_its_tcp_connection(spied) -> None:
    _, _, msgs, _, _ = spied
    names = {m["transport"]: set() for m in msgs}
    for m in msgs:
        names[m["transport"]].add(m["connection"])
    # One name per TCP connection, no pid in it: the same name at the client and the server.
    assert all(c.startswith("tls:") and c.count(":") == 1 for c in names["https"])
    assert all(c.startswith("tcp:") for c in names["http"])


def test_database_rows_match_the_jsonl(spied) -> None:
    d, _, msgs, _, _ = spied
    with sqlite3.connect(d / "s.db") as c:
        rows = c.execute("SELECT id, connection, transport, kind, method, jsonrpc_id, sender_pid, receiver_pid, latency_ns, request_id "
                         "FROM mcp_messages ORDER BY id").fetchall()
        calls = c.execute("SELECT COUNT(*), MIN(duration) FROM tool_calls").fetchone()
    keys = ("id", "connection", "transport", "kind", "method", "jsonrpc_id", "sender_pid", "receiver_pid", "latency_ns", "request_id")
    assert rows == [tuple(m[k] for k in keys) for m in msgs]
    assert calls[0] == 2 * CALLS and calls[1] > 0
