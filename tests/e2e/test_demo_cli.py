"""`whyprobe demo` as users run it: as an unprivileged user (a replay, said plainly) and, where
eBPF works, live: a real workload traced, explained, and its expected finding reported."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from testkit import wait_for_ready

from whyprobe.commands import main
from whyprobe.demo import scenarios


@pytest.fixture
def open_dir():
    """A directory anyone can write, reachable by an unprivileged user (pytest's tmp_path is not)."""
    path = Path(tempfile.mkdtemp(prefix="whyprobe-demo-test-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


def test_unprivileged_user_gets_a_replay_that_says_so(open_dir, as_nobody):
    # GIVEN a directory the unprivileged user can write
    work = open_dir
    out = work / "demo.db"
    # WHEN it runs the demo of cpu-contention
    res = subprocess.run(
        as_nobody([sys.executable, "-m", "whyprobe", "demo", "cpu-contention", "--out", str(out)]),
        capture_output=True, text=True, cwd=work, timeout=120,
    )
    # THEN it exits 0, says first that this is a replay and why, and explains the recording
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert re.fullmatch(
        r"No eBPF here \(not root: tracing needs root or CAP_BPF\+CAP_PERFMON\): replaying a recording of cpu-contention "
        r"made on \S+ on \d{4}-\d\d-\d\d \d\d:\d\d UTC \(kernel \S+\)",
        lines[0],
    ), lines[0]
    assert f"Expected {scenarios.get('cpu-contention').expect}: found." in lines
    assert out.stat().st_uid == (65534 if os.geteuid() == 0 else os.geteuid())
    assert res.stderr == ""


def test_unprivileged_user_cannot_write_where_it_may_not(open_dir, as_nobody):
    locked = open_dir / "locked"
    locked.mkdir(mode=0o700)  # owned by root (or by us, when not root: then make it unreachable)
    if os.geteuid() != 0:
        locked.chmod(0o000)
    try:
        res = subprocess.run(
            as_nobody([sys.executable, "-m", "whyprobe", "demo", "clean", "--out", str(locked / "x.db")]),
            capture_output=True, text=True, cwd=open_dir, timeout=120,
        )
    finally:
        locked.chmod(0o700)
    assert res.returncode == 1
    assert res.stderr == f"whyprobe: Cannot write database: {locked / 'x.db'} (Permission denied)\n"
    assert res.stdout == ""


def test_live_demo_traces_and_explains(bpf_required, tmp_path, capsys):
    # GIVEN root + eBPF, WHEN the sync-wait demo runs for 2 s
    out = tmp_path / "live.db"
    assert main(["demo", "sync-wait", "--duration", "2s", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # THEN it ran live (no replay), wrote a complete trace, and explain found the GPU-bound syncs
    assert lines[0] == f"whyprobe demo sync-wait: {scenarios.get('sync-wait').description}"
    assert not any(line.startswith("No eBPF here") for line in lines)
    wrote = next(line for line in lines if line.startswith("Wrote "))
    assert re.fullmatch(rf"Wrote {re.escape(str(out))} \([\d,]+ events, 0 dropped\)", wrote)
    assert f"Expected {scenarios.get('sync-wait').expect}: found." in lines
    conn = sqlite3.connect(out)
    assert conn.execute("SELECT argv FROM sessions").fetchone() == ("whyprobe demo sync-wait",)
    # the workload ran for the asked 2 s: its syncs span at least 1.5 s of trace
    span = conn.execute("SELECT (MAX(timestamp) - MIN(timestamp)) / 1e9 FROM events WHERE source = 1 AND op = 6").fetchone()[0]
    assert 1.5 < span < 3.0
    # nothing of the workload is left running, and its data directory is gone
    assert psutil.Process().children(recursive=True) == []
    assert sorted(p.name for p in Path(tmp_path).iterdir() if not p.name.startswith("live.db")) == []


def test_live_mcp_tool_demo_shows_footprints_and_wire_traffic(bpf_required, tmp_path, capfd):
    # GIVEN root + eBPF, WHEN the MCP scenario runs: a real SDK client starts a real SDK server
    out = tmp_path / "mcp.db"
    assert main(["demo", "mcp-tool", "--out", str(out)]) == 0
    stdout = capfd.readouterr().out
    lines = stdout.splitlines()
    # THEN the client did its work, footprint attributed it, and the wire exchange is listed in order
    assert "search_notes('gpu'): gpu-kernels.md, gpu-latency.md" in lines
    calls = [line.strip().split(":")[0] for line in lines if line.startswith("  tools/call ")]
    assert calls == ["tools/call search_notes", "tools/call read_note"] * 2
    assert f"Expected {scenarios.get('mcp-tool').expect}: found." in lines
    conn = sqlite3.connect(out)
    execs = {c for (c,) in conn.execute("SELECT name FROM process_names")}
    assert {"grep"} <= execs


def test_ctrl_c_ends_a_live_demo_cleanly_and_still_explains(bpf_required, tmp_path):
    # GIVEN a live demo asked to run for 30 s
    out = tmp_path / "int.db"
    proc = subprocess.Popen([sys.executable, "-m", "whyprobe", "demo", "clean", "--duration", "30s", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = psutil.Process(proc.pid).create_time()
    # WHEN it is interrupted once its trace is recording
    assert proc.stdout.readline().startswith("whyprobe demo clean: ")
    assert proc.stdout.readline().startswith("Tracing train_loop ")
    wait_for_ready(proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    # THEN it exits 0 with the trace written and explained, and leaves no workload behind
    assert proc.returncode == 0, stderr
    assert re.search(r"^Wrote .* \([\d,]+ events, 0 dropped\)$", stdout, re.M)
    assert f"Expected {scenarios.get('clean').expect}: found." in stdout.splitlines()
    assert "Traceback" not in stderr
    # (ours: started by this demo, with its 30 s; other programs on the host may run train_loop too)
    leftovers = [p for p in psutil.process_iter(["exe", "cmdline", "create_time"])
                 if (p.info["exe"] or "").endswith("/train_loop") and "30" in (p.info["cmdline"] or []) and p.info["create_time"] >= started]
    assert leftovers == []
