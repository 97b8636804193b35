"""`whyprobe footprint --cmd` on real PyPI MCP servers driven by the SDK stdio client, in one traced
session: mcp-server-time, mcp-server-git (exec of git, reads under the repo) and mcp-server-fetch
(the connect to a local HTTP server)."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import shlex
import sqlite3
import subprocess
import threading

import pytest
from spy_peers import BIN, CLIENT, SERVER

from whyprobe.commands import main

pytestmark = pytest.mark.usefixtures("bpf_required")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "page.html").write_text("<html><body><p>hello from the footprint test</p></body></html>")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Quiet(*a, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    for args in (["init", "-q"], ["config", "user.email", "t@example.com"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    (repo / "tracked.txt").write_text("one\n")
    subprocess.run(["git", "add", "tracked.txt"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "first"], cwd=repo, check=True)
    (repo / "tracked.txt").write_text("two\n")
    return repo


@pytest.fixture(scope="module")
def traced(tmp_path_factory, site, repo):
    d = tmp_path_factory.mktemp("fp")
    data = d / "data.txt"
    data.write_text("payload\n")
    runs = [
        ([["get_current_time", {"timezone": "UTC"}]], [str(BIN / "mcp-server-time")]),
        ([["git_status", {"repo_path": str(repo)}]], [str(BIN / "mcp-server-git")]),
        ([["fetch", {"url": f"http://127.0.0.1:{site}/page.html", "raw": True}]], [str(BIN / "mcp-server-fetch"), "--ignore-robots-txt", "--allow-private-ips"]),
        ([["read_file", {"path": str(data)}], ["add", {"a": 1, "b": 2}]], SERVER),
    ]
    script = " && ".join(shlex.join([*CLIENT, str(d / f"ref{i}.json"), "calls", json.dumps(calls), "--", *server])
                         for i, (calls, server) in enumerate(runs))
    out = io.StringIO()  # capsys is function-scoped; this fixture serves the module
    with contextlib.redirect_stdout(out):
        rc = main(["footprint", "--json", "--out", str(d / "fp.db"), "--cmd", "--", "sh", "-c", script])
    assert rc == 0
    doc = json.loads(out.getvalue().strip().splitlines()[-1])
    refs = [json.loads((d / f"ref{i}.json").read_text()) for i in range(len(runs))]
    return d, doc, {c["tool_name"]: c for c in doc["calls"]}, refs, data


def test_every_tool_call_found_with_its_server(traced) -> None:
    _, doc, calls, refs, _ = traced
    assert sorted(calls) == ["add", "fetch", "get_current_time", "git_status", "read_file"]
    assert all(not c["is_error"] for c in calls.values()), refs
    assert all(c["duration_ns"] > 0 and c["attribution"] == "exclusive" for c in calls.values())
    # One server process per client run; calls of one server share it.
    assert calls["read_file"]["server_pid"] == calls["add"]["server_pid"]
    assert len({c["server_pid"] for c in calls.values()}) == 4
    names = {doc["servers"][str(c["server_pid"])].split()[0] for c in calls.values()}
    assert names == {"mcp-time", "mcp-git", "mcp-fetch", "spy-test-server"}


def test_git_status_execs_git_and_reads_the_repo(traced, repo) -> None:
    _, _, calls, _, _ = traced
    c = calls["git_status"]
    assert any(ch.split()[0].endswith("git") and "status" in ch.split() for ch in c["children"]), c["children"]
    assert any(f.startswith(str(repo)) or "/.git/" in f for f in c["files"]), c["files"]
    assert len(c["pids"]) > 1  # the server and its git child(ren)


def test_fetch_connects_to_the_local_server(traced, site) -> None:
    _, _, calls, refs, _ = traced
    c = calls["fetch"]
    assert f"127.0.0.1:{site}" in c["endpoints"]
    assert "hello from the footprint test" in json.dumps(refs[2])


def test_read_file_opens_the_file_and_add_opens_nothing(traced) -> None:
    _, _, calls, _, data = traced
    assert str(data) in calls["read_file"]["files"]
    assert str(data) not in calls["add"]["files"]
    for c in calls.values():
        assert c["syscalls"] > 0 and 0 < c["cpu_user_ns"] + c["cpu_sys_ns"] <= c["duration_ns"] * 2


def test_stored_rows_and_event_links(traced) -> None:
    d, _, calls, _, _ = traced
    with sqlite3.connect(d / "fp.db") as c:
        rows = dict(c.execute("SELECT tool_name, syscalls FROM tool_calls").fetchall())
        linked = dict(c.execute("SELECT t.tool_name, COUNT(*) FROM tool_call_events l JOIN tool_calls t ON t.id = l.call_id GROUP BY t.tool_name").fetchall())
        outside = c.execute(
            "SELECT COUNT(*) FROM tool_call_events l JOIN tool_calls t ON t.id = l.call_id JOIN events e ON e.id = l.event_id "
            "WHERE e.timestamp < t.started_at OR e.timestamp > t.ended_at").fetchone()[0]
    assert rows == {k: v["syscalls"] for k, v in calls.items()}
    assert all(linked[k] >= rows[k] for k in rows)
    assert outside == 0
