"""`whyprobe footprint --cmd` on the npm `@modelcontextprotocol/server-filesystem` (node, pinned in
tests/node/package-lock.json, installed by `make test`) driven by the SDK stdio client: each tool
call opens exactly the files it was asked about, with its latency."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sqlite3
import time

import pytest
from spy_peers import CLIENT, HERE
from testkit import cannot_run

from whyprobe.commands import main

pytestmark = pytest.mark.usefixtures("bpf_required")

FS_SERVER = HERE.parent / "node" / "node_modules" / "@modelcontextprotocol" / "server-filesystem" / "dist" / "index.js"


@pytest.fixture(scope="module")
def node_server() -> list[str]:
    node = shutil.which("node")
    if node is None or not FS_SERVER.is_file():
        reason = "npm test peers not installed: run `make test` or `npm ci --prefix tests/node`"
        cannot_run(reason)
    return [node, str(FS_SERVER)]


@pytest.fixture(scope="module")
def traced(tmp_path_factory, node_server):
    d = tmp_path_factory.mktemp("npmfp")
    root = d / "files"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "b.txt").write_text("beta\n")
    calls = [
        ["read_text_file", {"path": str(root / "a.txt")}],
        ["list_directory", {"path": str(root)}],
        ["read_file", {"path": str(root / "b.txt")}],
    ]
    t0 = time.time_ns()
    out = io.StringIO()  # capsys is function-scoped; this fixture serves the module
    with contextlib.redirect_stdout(out):
        rc = main(["footprint", "--json", "--out", str(d / "fp.db"), "--cmd", "--",
                   *CLIENT, str(d / "ref.json"), "calls", json.dumps(calls), "--", *node_server, str(root)])
    assert rc == 0
    wall = time.time_ns() - t0
    doc = json.loads(out.getvalue().strip().splitlines()[-1])
    return d, root, doc, json.loads((d / "ref.json").read_text()), wall


def test_each_call_found_with_the_node_server(traced) -> None:
    _, _, doc, ref, wall = traced
    assert [c["tool_name"] for c in doc["calls"]] == ["read_text_file", "list_directory", "read_file"]
    assert [r["result"] for r in ref[1:]] == [{"content": "alpha\n"}, {"content": "[FILE] a.txt\n[FILE] b.txt\n[DIR] sub"},
                                              {"content": "beta\n"}]
    [server] = {c["server_pid"] for c in doc["calls"]}
    assert doc["servers"][str(server)].startswith("secure-filesystem-server ")
    for c in doc["calls"]:
        assert not c["is_error"] and c["attribution"] == "exclusive"
        assert 0 < c["duration_ns"] < wall and c["syscalls"] > 0


def test_files_opened_are_exactly_those_asked_about(traced) -> None:
    _, root, doc, _, _ = traced
    mine = {c["tool_name"]: sorted(f for f in c["files"] if f.startswith(str(root))) for c in doc["calls"]}
    assert mine == {
        "read_text_file": [str(root / "a.txt")],
        "list_directory": [str(root)],
        "read_file": [str(root / "b.txt")],
    }
    listing = next(c for c in doc["calls"] if c["tool_name"] == "list_directory")
    assert "getdents64" in listing["top_syscalls"]


def test_stored_calls_match_the_wire_latency(traced) -> None:
    d, _, doc, _, _ = traced
    with sqlite3.connect(d / "fp.db") as c:
        rows = c.execute(
            "SELECT t.tool_name, t.duration, t.files, r.latency_ns FROM tool_calls t "
            "JOIN mcp_messages q ON q.id = t.request_msg JOIN mcp_messages r ON r.request_id = q.id ORDER BY t.started_at"
        ).fetchall()
    assert [r[0] for r in rows] == [c["tool_name"] for c in doc["calls"]]
    for (_, duration, files, latency), call in zip(rows, doc["calls"]):
        assert duration == call["duration_ns"] and json.loads(files) == call["files"]
        # The server's own window (read of the request to write of the response) lies inside the
        # first-sighting to first-sighting latency the wire reports (client write to server write).
        assert 0 < duration <= latency
