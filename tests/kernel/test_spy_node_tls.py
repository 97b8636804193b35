"""`whyprobe spy` on an MCP client as most of them run: node, whose HTTPS goes through the OpenSSL
linked into the `node` executable (no libssl.so). The TypeScript SDK's client (tests/node, pinned)
calls the Python SDK server over HTTPS with a self-signed certificate.

* Only the client is traced, as when the server is remote: every request and response is read in
  the node process, in plaintext, and paired.
* Both ends traced: node's SSL* are named by the same TCP connection as the server's (bound
  exactly through libssl's BIO_write), so each message is reported once, with both pids.
* `trace --probes proc,wire` stores the same exchange, from node alone.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import subprocess

import pytest
from spy_http_pair import free_port, wait_listening
from spy_peers import HERE, PY, SERVER, jsonl
from testkit import cannot_run

from whyprobe.commands import main

pytestmark = pytest.mark.usefixtures("bpf_required")

CALLS = 12
BIG = 50_000  # the last call's argument: several TLS records, kept whole (under the payload cap)
CLIENT = HERE.parent / "node" / "sdk_client.mjs"
SDK = HERE.parent / "node" / "node_modules" / "@modelcontextprotocol" / "sdk" / "package.json"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None or not SDK.is_file():
        reason = "node or the npm test peers missing: run `make test` or `npm ci --prefix tests/node`"
        cannot_run(reason)
    return node


def _spy(d, argv: list[str]) -> tuple[dict, list[dict], dict]:
    out = io.StringIO()  # capsys is function-scoped; these fixtures serve the module
    with contextlib.redirect_stdout(out):
        rc = main(["spy", "--json", "--out", str(d / "s.db"), "--jsonl", str(d / "s.jsonl"), "--cmd", "--", *argv])
    assert rc == 0
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    return summary, jsonl(d / "s.jsonl"), json.loads((d / "ref.json").read_text())


@pytest.fixture(scope="module")
def remote(tls_cert, node):
    """The server runs untraced (a remote server, as far as whyprobe knows): (url, cert)."""
    cert, key = (str(p) for p in tls_cert)
    port = free_port()
    server = subprocess.Popen([*SERVER, "http", str(port), cert, key])
    try:
        wait_listening(port, server)
        yield f"https://127.0.0.1:{port}/mcp", cert
    finally:
        server.terminate()
        server.wait(10)


def _node_client(d, node: str, url: str) -> list[str]:
    return [node, str(CLIENT), str(d / "ref.json"), url, str(CALLS), str(BIG)]


@pytest.fixture(scope="module")
def client_only(tmp_path_factory, remote, node):
    """spy on node alone: node is the command."""
    d = tmp_path_factory.mktemp("nodetls")
    url, cert = remote
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NODE_EXTRA_CA_CERTS", cert)
        summary, msgs, ref = _spy(d, _node_client(d, node, url))
    return d, summary, msgs, ref


@pytest.fixture(scope="module")
def both_ends(tmp_path_factory, tls_cert, node):
    """spy_http_pair.py starts the server, then node as its client: both in the traced tree."""
    d = tmp_path_factory.mktemp("nodetls2")
    cert, key = (str(p) for p in tls_cert)
    return (d, *_spy(d, [PY, str(HERE / "spy_http_pair.py"), "--node", str(d / "ref.json"), str(CALLS), str(BIG), cert, key]))


def test_openssl_inside_node_is_probed(client_only, node) -> None:
    _, summary, _, _ = client_only
    assert os.path.realpath(node) in summary["tls_libraries"]
    assert summary["command_exit_status"] == 0 and summary["dropped"] == 0 and summary["lost_bytes"] == 0


def test_plaintext_is_read_in_the_node_process(client_only) -> None:
    _, summary, msgs, ref = client_only
    pid = ref["pid"]
    assert [(m["kind"], m["method"]) for m in msgs if m["kind"] != "response"] == (
        [("request", "initialize"), ("notification", "notifications/initialized"), ("request", "tools/list")]
        + [("request", "tools/call")] * CALLS
    )
    assert len([m for m in msgs if m["kind"] == "response"]) == CALLS + 2
    assert summary["messages"] == len(msgs) == 2 * CALLS + 5
    for m in msgs:
        assert m["transport"] == "https"
        if m["kind"] == "response":
            assert (m["direction"], m["sender_pid"], m["receiver_pid"]) == ("server->client", 0, pid)
        else:
            assert (m["direction"], m["sender_pid"], m["receiver_pid"], m["sender_comm"]) == ("client->server", pid, 0, "node")
    [session] = summary["sessions"]
    assert (session["client_pid"], session["server"]) == (pid, "spy-test-server 1.0.0")
    calls = [m for m in msgs if m["method"] == "tools/call" and m["kind"] == "request"]
    assert [m["payload"]["params"]["arguments"] for m in calls[:-1]] == [{"a": i, "b": 1} for i in range(CALLS - 1)]
    assert calls[-1]["payload"]["params"]["arguments"] == {"blob": "x" * BIG} and not calls[-1]["truncated"]


def test_responses_pair_with_their_requests_on_their_tcp_connection(client_only) -> None:
    _, summary, msgs, ref = client_only
    by_id = {m["id"]: m for m in msgs}
    results = []
    for r in (m for m in msgs if m["kind"] == "response"):
        q = by_id[r["request_id"]]
        assert (q["jsonrpc_id"], q["method"], q["connection"]) == (r["jsonrpc_id"], r["method"], r["connection"])
        assert r["latency_ns"] > 0
        if q["method"] == "tools/call":
            results.append(r["payload"]["result"]["structuredContent"])
    assert summary["unpaired_responses"] == 0
    assert results == [c["result"] for c in ref["exchange"] if c["method"] == "tools/call"]
    assert results[-1] == {"result": BIG}
    # Named by the TCP connection (no pid in the name), not by the SSL* inside node.
    assert all(m["connection"].startswith("tls:") and m["connection"].count(":") == 1 for m in msgs)


def test_stored_messages_and_tool_calls(client_only) -> None:
    d, _, msgs, _ = client_only
    with sqlite3.connect(d / "s.db") as c:
        stored = c.execute("SELECT COUNT(*), COUNT(DISTINCT connection) FROM mcp_messages WHERE transport = 'https'").fetchone()
        calls = c.execute("SELECT tool_name, COUNT(*) FROM tool_calls GROUP BY tool_name ORDER BY tool_name").fetchall()
    assert stored[0] == len(msgs) and stored[1] == len({m["connection"] for m in msgs})
    assert calls == [("add", CALLS - 1), ("size", 1)]


def test_both_ends_report_each_message_once(both_ends) -> None:
    _, summary, msgs, ref = both_ends
    [session] = summary["sessions"]
    client, server = session["client_pid"], session["server_pid"]
    assert client == ref["pid"] and server > 0 and server != client
    assert summary["messages"] == len(msgs) == 2 * CALLS + 5 and summary["unpaired_responses"] == 0
    for m in msgs:
        want = (client, server) if m["direction"] == "client->server" else (server, client)
        assert (m["sender_pid"], m["receiver_pid"]) == want
    assert len({(m["connection"], m["jsonrpc_id"], m["kind"]) for m in msgs}) == len(msgs)


def test_trace_with_wire_stores_nodes_tls_traffic(tmp_path, remote, node, capsys) -> None:
    url, cert = remote
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NODE_EXTRA_CA_CERTS", cert)
        rc = main(["trace", "--json", "--probes", "proc,wire", "--out", str(tmp_path / "t.db"), "--cmd", "--",
                   *_node_client(tmp_path, node, url)])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["mcp_messages"], summary["tool_calls"]) == (2 * CALLS + 5, CALLS)
    pid = json.loads((tmp_path / "ref.json").read_text())["pid"]
    with sqlite3.connect(tmp_path / "t.db") as c:
        ends = c.execute("SELECT direction, sender_pid, receiver_pid, COUNT(*) FROM mcp_messages GROUP BY 1, 2, 3 ORDER BY 1").fetchall()
        unpaired = c.execute("SELECT COUNT(*) FROM mcp_messages WHERE kind = 'response' AND request_id IS NULL").fetchone()[0]
    assert ends == [("client->server", pid, 0, CALLS + 3), ("server->client", 0, pid, CALLS + 2)] and unpaired == 0
