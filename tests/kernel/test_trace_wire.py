"""One trace holds both layers: `whyprobe trace --probes cuda,sched,syscalls,proc,wire --cmd --` an
SDK client that starts its server stores the MCP messages, the tool calls and their footprints in
the same database as the CUDA, scheduler and syscall events. The server's `gpu_alloc` tool calls
cudaMalloc 200 times through the real libcudart wheel (35 without a driver: the probes fire)."""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3

import pytest
from spy_peers import CLIENT, SERVER

from whyprobe.commands import main
from whyprobe.events import Source

pytestmark = pytest.mark.usefixtures("bpf_required")

ALLOCS = 200
NR_OPENAT = 257


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    d = tmp_path_factory.mktemp("tracewire")
    text = d / "notes.txt"
    text.write_text("hello\n")
    calls = [["gpu_alloc", {"n": ALLOCS}], ["read_file", {"path": str(text)}], ["add", {"a": 2, "b": 3}]]
    out = io.StringIO()  # capsys is function-scoped; this fixture serves the module
    with contextlib.redirect_stdout(out):
        rc = main(["trace", "--json", "--out", str(d / "t.db"), "--probes", "cuda,sched,syscalls,proc,wire", "--cmd", "--",
                   *CLIENT, str(d / "ref.json"), "calls", json.dumps(calls), "--", *SERVER])
    assert rc == 0
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    ref = json.loads((d / "ref.json").read_text())
    conn = sqlite3.connect(d / "t.db")
    yield conn, summary, ref, text
    conn.close()


def _server(conn: sqlite3.Connection) -> int:
    [(pid,)] = conn.execute("SELECT DISTINCT server_pid FROM tool_calls").fetchall()
    return pid


def test_messages_and_tool_calls_are_stored(traced) -> None:
    conn, summary, ref, _ = traced
    assert summary["command_exit_status"] == 0 and summary["dropped"]["total"] == 0
    # initialize, initialized, tools/list and 3 calls, each request answered.
    assert summary["mcp_messages"] == 11 and summary["tool_calls"] == 3
    kinds = conn.execute("SELECT kind, COALESCE(method, ''), COUNT(*) FROM mcp_messages GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
    assert kinds == [("notification", "notifications/initialized", 1), ("request", "initialize", 1),
                     ("request", "tools/call", 3), ("request", "tools/list", 1),
                     ("response", "initialize", 1), ("response", "tools/call", 3), ("response", "tools/list", 1)]
    calls = conn.execute("SELECT tool_name, is_error FROM tool_calls ORDER BY started_at").fetchall()
    assert calls == [("gpu_alloc", 0), ("read_file", 0), ("add", 0)]
    assert [r["tool"] for r in ref[1:]] == [c[0] for c in calls]


def test_cuda_calls_inside_the_tool_call(traced) -> None:
    conn, _, ref, _ = traced
    server = _server(conn)
    [codes] = [r["result"]["result"] for r in ref[1:] if r["tool"] == "gpu_alloc"]
    cuda = conn.execute(f"SELECT pid, ret_code, COUNT(*) FROM events WHERE source = {int(Source.CUDA)} GROUP BY 1, 2").fetchall()
    assert cuda == [(server, codes[0], ALLOCS)] and len(codes) == 1
    per_call = dict(conn.execute("SELECT tool_name, cuda_calls FROM tool_calls").fetchall())
    assert per_call == {"gpu_alloc": ALLOCS, "read_file": 0, "add": 0}
    linked = conn.execute(
        f"SELECT COUNT(*) FROM tool_call_events l JOIN tool_calls t ON t.id = l.call_id JOIN events e ON e.id = l.event_id "
        f"WHERE t.tool_name = 'gpu_alloc' AND e.source = {int(Source.CUDA)}").fetchone()[0]
    assert linked == ALLOCS


def test_syscall_and_scheduler_events_beside_the_messages(traced) -> None:
    conn, _, _, text = traced
    server = _server(conn)
    [(files, syscalls)] = conn.execute("SELECT files, syscalls FROM tool_calls WHERE tool_name = 'read_file'").fetchall()
    assert json.loads(files) == [str(text)] and syscalls > 0
    opens = conn.execute(f"SELECT pid FROM events WHERE source = {int(Source.SYSCALL)} AND op = {NR_OPENAT} AND detail = ?",
                         (str(text),)).fetchall()
    assert opens == [(server,)]
    [read] = conn.execute("SELECT started_at, ended_at FROM tool_calls WHERE tool_name = 'read_file'").fetchall()
    [(opened_at,)] = conn.execute(f"SELECT timestamp FROM events WHERE source = {int(Source.SYSCALL)} AND detail = ?", (str(text),))
    assert read[0] <= opened_at <= read[1]
    off_cpu = conn.execute("SELECT COUNT(*) FROM host_events WHERE pid = ? AND op = 'sched_switch'", (server,)).fetchone()[0]
    assert off_cpu > 0
