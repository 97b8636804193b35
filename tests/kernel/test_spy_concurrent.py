"""Concurrency. `whyprobe spy`: two SDK stdio clients at once, each with its own SDK server, using
the same JSON-RPC ids (1, 2, ...): every response pairs with the request of its own connection,
checked against each client's own view. `whyprobe footprint`: two overlapping calls on one
thread-per-request server are told apart by the thread that handled each (spy_threaded.py)."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import sqlite3

import pytest
from spy_peers import CLIENT, HERE, PY, SERVER, jsonl

from whyprobe.commands import main

pytestmark = pytest.mark.usefixtures("bpf_required")

CALLS = 25
# Different arguments per client, so a response paired across clients shows in its result.
BASES = {"A": 0, "B": 1000}


@pytest.fixture(scope="module")
def spied(tmp_path_factory):
    d = tmp_path_factory.mktemp("spyconc")
    runs = []
    for name, base in BASES.items():
        calls = [["add", {"a": base + i, "b": 1}] for i in range(CALLS)]
        runs.append(shlex.join([*CLIENT, str(d / f"ref{name}.json"), "calls", json.dumps(calls), "--", *SERVER]))
    script = " & ".join(runs) + " & wait"
    out = io.StringIO()  # capsys is function-scoped; this fixture serves the module
    with contextlib.redirect_stdout(out):
        rc = main(["spy", "--json", "--out", str(d / "s.db"), "--jsonl", str(d / "s.jsonl"), "--cmd", "--", "sh", "-c", script])
    assert rc == 0
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    refs = {n: json.loads((d / f"ref{n}.json").read_text()) for n in BASES}
    return d, summary, jsonl(d / "s.jsonl"), refs


def sessions_by_client(summary, msgs) -> dict[str, dict]:
    """Each client's session, named by the first argument its calls carried."""
    out = {}
    for s in summary["sessions"]:
        first = next(m for m in msgs if m["method"] == "tools/call" and m["kind"] == "request" and m["sender_pid"] == s["client_pid"])
        out["A" if first["payload"]["params"]["arguments"]["a"] < 1000 else "B"] = s
    return out


def test_both_clients_ran_concurrently_with_the_same_ids(spied) -> None:
    _, summary, msgs, _ = spied
    assert len(summary["sessions"]) == 2 and summary["tool_calls"] == 2 * CALLS
    by = sessions_by_client(summary, msgs)
    assert sorted(by) == ["A", "B"]
    ids = {n: [m["jsonrpc_id"] for m in msgs if m["kind"] == "request" and m["sender_pid"] == s["client_pid"]] for n, s in by.items()}
    assert ids["A"] == ids["B"] == [str(i) for i in range(1, CALLS + 3)]
    # The two exchanges overlap in time (else the test proves nothing about mis-pairing).
    span = {n: (min(m["timestamp"] for m in msgs if s["client_pid"] in (m["sender_pid"], m["receiver_pid"])),
                max(m["timestamp"] for m in msgs if s["client_pid"] in (m["sender_pid"], m["receiver_pid"]))) for n, s in by.items()}
    assert span["A"][0] < span["B"][1] and span["B"][0] < span["A"][1]
    assert summary["unpaired_responses"] == 0 and summary["dropped"] == 0


def test_every_response_pairs_within_its_own_connection(spied) -> None:
    _, summary, msgs, refs = spied
    by_id = {m["id"]: m for m in msgs}
    for name, s in sessions_by_client(summary, msgs).items():
        client, server = s["client_pid"], s["server_pid"]
        responses = [m for m in msgs if m["kind"] == "response" and m["receiver_pid"] == client]
        assert len(responses) == CALLS + 2
        results = []
        for r in responses:
            q = by_id[r["request_id"]]
            assert (q["sender_pid"], q["receiver_pid"], r["sender_pid"]) == (client, server, server)
            assert q["jsonrpc_id"] == r["jsonrpc_id"] and r["latency_ns"] > 0
            if q["method"] == "tools/call":
                args = q["payload"]["params"]["arguments"]
                assert r["payload"]["result"]["structuredContent"] == {"result": args["a"] + args["b"]}
                results.append(r["payload"]["result"]["structuredContent"])
        assert results == [x["result"] for x in refs[name] if x["method"] == "tools/call"]
        assert results == [{"result": BASES[name] + i + 1} for i in range(CALLS)]


def test_tool_calls_rows_name_their_own_server(spied) -> None:
    d, summary, msgs, _ = spied
    servers = {s["server_pid"] for s in summary["sessions"]}
    with sqlite3.connect(d / "s.db") as c:
        rows = c.execute("SELECT t.server_pid, m.sender_pid, m.receiver_pid FROM tool_calls t JOIN mcp_messages m ON m.id = t.request_msg").fetchall()
    assert len(rows) == 2 * CALLS
    assert all(server == receiver and server in servers for server, _, receiver in rows)
    assert {server for server, _, _ in rows} == servers


@pytest.fixture(scope="module")
def threaded(tmp_path_factory):
    d = tmp_path_factory.mktemp("fpthread")
    a, b = d / "a.txt", d / "b.txt"
    a.write_text("alpha\n")
    b.write_text("beta\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["footprint", "--json", "--out", str(d / "fp.db"), "--cmd", "--",
                   PY, str(HERE / "spy_threaded.py"), "client", str(d / "ref.json"), str(a), str(b)])
    assert rc == 0
    doc = json.loads(out.getvalue().strip().splitlines()[-1])
    return d, doc, json.loads((d / "ref.json").read_text()), str(a), str(b)


def test_overlapping_calls_are_attributed_to_their_handler_threads(threaded) -> None:
    _, doc, ref, a, b = threaded
    assert ref == {"a": "alpha\n", "b": "beta\n", "alone": "alpha\n"}
    first, second, alone = doc["calls"]
    assert first["started_at"] < second["started_at"] < first["ended_at"]  # they overlap
    assert (first["attribution"], second["attribution"], alone["attribution"]) == ("thread", "thread", "exclusive")
    assert len({first["handler_tid"], second["handler_tid"], alone["handler_tid"]}) == 3
    assert first["server_pid"] == second["server_pid"] == alone["server_pid"] not in (first["handler_tid"], second["handler_tid"])
    # Each call sees its own file and its own child only, not the other's.
    assert a in first["files"] and b not in first["files"]
    assert b in second["files"] and a not in second["files"]
    assert [ch.split()[0] for ch in first["children"]] == ["/bin/echo"] and second["children"] == []
    assert len(first["pids"]) == 2 and second["pids"] == [second["server_pid"]]
    assert a in alone["files"]


def test_thread_calls_link_only_their_threads_events(threaded) -> None:
    d, doc, _, _, _ = threaded
    first, second, _ = doc["calls"]
    with sqlite3.connect(d / "fp.db") as c:
        for call in (first, second):
            threads = {tuple(r) for r in c.execute(
                "SELECT DISTINCT e.pid, e.tid FROM tool_call_events l JOIN events e ON e.id = l.event_id WHERE l.call_id = ?",
                (call["call_id"],))}
            server_threads = {tid for pid, tid in threads if pid == call["server_pid"]}
            assert server_threads == {call["handler_tid"]}
            assert {pid for pid, _ in threads} == set(call["pids"])
