"""The payload path under real eBPF on messy workloads: a version-manager shim starting python
plus 300 short children, 2,000 opens with a payload ring too small to hold their paths, instant
events written over a wrapped ring, a 300 KB MCP message over the SDK's stdio pair."""

from __future__ import annotations

import io
import json
import os
import shlex
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import anyio
import numpy as np
import pytest
from mcp import Client
from spy_peers import CLIENT, SERVER, jsonl

from whyprobe.analyze.explain import explain
from whyprobe.commands import main
from whyprobe.events import F_DETAIL_LOST, F_HAS_PAYLOAD, Source
from whyprobe.kernel.libbpf import map_items, map_update
from whyprobe.kernel.loader import ProbeSet
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.host import ProcFamily, SyscallsFamily
from whyprobe.record.session import TraceOptions, TraceSession
from whyprobe.reporters.explain import render_explain_text
from whyprobe.server.app import build_server
from whyprobe.server.tools import ServerState
from whyprobe.store.reader import open_trace

pytestmark = pytest.mark.usefixtures("bpf_required")

HOST_EXEC, HOST_EXIT, HOST_FORK = 5, 6, 7
NR_OPENAT = 257
HELPERS = ("/bin/true", "/bin/cat /dev/null", "/usr/bin/basename /a/b", "/usr/bin/dirname /a/b")


def _shim(bin_dir: Path) -> None:
    """`python3` as a version manager installs it: a bash script that runs 40 helpers, then execs."""
    bin_dir.mkdir()
    helpers = "\n".join(f"{h} >/dev/null" for h in HELPERS for _ in range(10))
    (bin_dir / "python3").write_text(f"#!/bin/bash\n{helpers}\nexec {sys.executable} \"$@\"\n")
    (bin_dir / "python3").chmod(0o755)


def test_shim_start_and_300_children_lose_nothing_with_default_probes_and_rings(tmp_path, monkeypatch, capsys) -> None:
    # GIVEN python3 on PATH is a bash shim (40 helper processes, then exec), and a script starting 300 children
    _shim(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    script = tmp_path / "script.py"
    script.write_text("import subprocess\nfor i in range(300):\n    subprocess.run(['/bin/true', str(i)])\n")
    db = tmp_path / "t.db"
    # WHEN it is traced as a user would, default probes and ring sizes
    rc = main(["trace", "--quiet", "--out", str(db), "--cmd", "--", "python3", str(script)])
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    conn = sqlite3.connect(db)
    # THEN nothing was lost: no event, no payload, nothing in the writer queue
    assert conn.execute("SELECT ring_drops, payload_drops, queue_drops, rate_drops FROM sessions").fetchone() == (0, 0, 0, 0), line
    assert "(0 dropped)" in line or ", 0 dropped)" in line, line
    # AND every exec is there with its argv: the 300 children and the shim's 10 runs of each helper
    execs = [d for (d,) in conn.execute("SELECT detail FROM events WHERE source = ? AND op = ?", (Source.HOST, HOST_EXEC))]
    assert sum(d == f"/bin/true {i}" for d in execs for i in range(300)) == 300
    for h in HELPERS:
        assert execs.count(h) == 10, (h, execs[:50])
    # AND every event that announced a payload has its detail
    opens = conn.execute("SELECT COUNT(*), COUNT(detail) FROM events WHERE source = ? AND op = ?", (Source.SYSCALL, NR_OPENAT)).fetchone()
    assert opens[0] > 1000 and opens[0] == opens[1]
    assert conn.execute("SELECT COUNT(*) FROM events WHERE flags & ? AND detail IS NULL", (F_HAS_PAYLOAD,)).fetchone() == (0,)


def _gated(code: str) -> subprocess.Popen:
    """A python child that waits for a line on stdin, then runs `code`."""
    return subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()\n" + code], stdin=subprocess.PIPE)


def _trace(db: Path, families: list, proc: subprocess.Popen, options: TraceOptions) -> object:
    session = TraceSession(db, families, TargetSpec(pids=[proc.pid]), options)
    session.start()
    try:
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    finally:
        summary = session.stop()
    return summary


def _opens_lose_nothing(tmp_path: Path, count: int, pause_s: float, families: list, opts: TraceOptions) -> None:
    """`count` open() calls of distinct paths, `pause_s` apart, are each stored with their path; nothing is lost."""
    code = f"import os, time\nfor i in range({count}):\n    time.sleep({pause_s})\n    try: open(f'/nonexistent/op-{{i}}')\n    except OSError: pass\n"
    proc = _gated(code)
    db = tmp_path / "t.db"
    summary = _trace(db, families, proc, opts)
    conn = sqlite3.connect(db)
    paths = [d for (d,) in conn.execute(
        "SELECT detail FROM events WHERE pid = ? AND source = ? AND op = ? AND detail LIKE '/nonexistent/op-%'",
        (proc.pid, Source.SYSCALL, NR_OPENAT))]
    assert sorted(paths) == sorted(f"/nonexistent/op-{i}" for i in range(count))
    assert (summary.dropped, summary.payload_drops, summary.details_lost) == (0, 0, 0)


def test_10000_opens_in_one_burst_are_lossless_with_default_rings(tmp_path) -> None:
    # GIVEN 10,000 open() calls as fast as python makes them (tens of ms), default ring sizes and drain
    # THEN every one is stored with its own path, and nothing of any kind was lost
    _opens_lose_nothing(tmp_path, 10_000, 0, [ProcFamily(), SyscallsFamily()], TraceOptions(snapshots=False))


def test_a_ring_passing_half_full_wakes_the_reader_before_its_interval(tmp_path) -> None:
    # GIVEN 2,000 opens over ~0.6 s, an event ring of 1,170 records and a payload ring of 64 KiB (~740
    # paths), drained every 10 s unless the kernel wakes the reader (a ring past half full); half a
    # ring is ~0.1 s of opens, room for a garbage collection pausing the reader
    opts = TraceOptions(ring_bytes=1 << 17, payload_ring_bytes=1 << 16, poll_ms=10_000, snapshots=False)
    # THEN every open is stored with its path: the reader drained long before its 10 s were up
    _opens_lose_nothing(tmp_path, 2000, 0.0002, [SyscallsFamily()], opts)


def test_2000_opens_are_all_stored_and_lost_paths_count_as_payload_losses(tmp_path) -> None:
    # GIVEN 2,000 open() calls of distinct names, and a payload ring of one page drained every 200 ms
    code = "import os\nfor i in range(2000):\n    try: open(f'/nonexistent/wp-{i}')\n    except OSError: pass\n"
    proc = _gated(code)
    opts = TraceOptions(payload_ring_bytes=4096, drain_pause_s=0.2, snapshots=False)
    db = tmp_path / "t.db"
    summary = _trace(db, [SyscallsFamily()], proc, opts)
    conn = sqlite3.connect(db)
    mine = "FROM events WHERE pid = ? AND source = ? AND op = ?"
    args = (proc.pid, Source.SYSCALL, NR_OPENAT)
    stored = conn.execute(f"SELECT COUNT(*) {mine} AND detail LIKE '/nonexistent/wp-%'", args).fetchone()[0]
    bare = conn.execute(f"SELECT COUNT(*) {mine} AND detail IS NULL AND flags & ?", (*args, F_DETAIL_LOST)).fetchone()[0]
    # THEN every openat event is stored: with its path, or flagged as having lost it
    assert stored + bare == 2000
    assert bare > 0  # one page cannot hold 2,000 paths between two drains
    # AND the losses are payload losses, not event drops, counted per family
    assert summary.dropped == 0 and summary.ring_drops == 0
    assert summary.payload_drops >= bare and summary.details_lost >= bare
    assert summary.by_family["syscalls"]["payloads"] == summary.payload_drops
    row = conn.execute("SELECT ring_drops, payload_drops FROM sessions").fetchone()
    assert row == (0, summary.payload_drops)
    flags = json.loads(conn.execute("SELECT flags FROM sessions").fetchone()[0])
    assert flags["drops"]["by_family"]["syscalls"] == {"events": 0, "payloads": summary.payload_drops}
    # AND explain says exactly that: complete, with a note on the details that were lost
    doc = explain(open_trace(db))
    assert doc["complete"] is True and doc["dropped_events"] == 0
    assert doc["payload_drops"] == summary.payload_drops and doc["events_without_detail"] >= bare
    assert any("stored without their detail" in n and "No event is missing" in n for n in doc["notes"])
    text = io.StringIO()
    render_explain_text(doc, text)
    assert "incomplete" not in text.getvalue() and "events are stored without their detail" in text.getvalue()
    # AND the MCP facts carry both counts
    facts = _facts(db)
    assert facts["sessions"][0]["payload_drops"] == summary.payload_drops and facts["sessions"][0]["ring_drops"] == 0
    assert facts["events_without_detail"] == summary.details_lost


def _facts(db: Path) -> dict:
    async def go() -> dict:
        async with Client(build_server(ServerState(db))) as c:
            return json.loads((await c.read_resource("whyprobe://facts")).contents[0].text)

    return anyio.run(go)


def test_instant_events_written_over_a_wrapped_ring_carry_duration_zero(tmp_path) -> None:
    # GIVEN a 16 KiB event ring (146 records) that 2,000 long syscalls wrap ~14 times, then 50
    # forks, execs and exits (instant events) written over that memory, paced so none is dropped
    code = (
        "import os, time\nfor _ in range(2000):\n    time.sleep(0.0002)\n"
        "for _ in range(50):\n    pid = os.fork()\n    if pid == 0:\n        os.execv('/bin/true', ['/bin/true'])\n"
        "    os.waitpid(pid, 0)\n    time.sleep(0.02)\n"
    )
    proc = _gated(code)
    opts = TraceOptions(ring_bytes=16384, poll_ms=5, snapshots=False)
    db = tmp_path / "t.db"
    summary = _trace(db, [ProcFamily(), SyscallsFamily(emit_all=True)], proc, opts)
    conn = sqlite3.connect(db)
    # THEN the long records were there and wrapped the ring many times
    slow = conn.execute("SELECT COUNT(*) FROM events WHERE source = ? AND op = 230 AND duration > 100000", (Source.SYSCALL,)).fetchone()[0]
    assert slow > 10 * 146 and summary.dropped == 0
    # AND every fork, exec and exit is instant, with nothing from an older record
    rows = conn.execute(
        "SELECT op, duration, arg2, aux, stack_hash FROM events WHERE source = ? AND op IN (?, ?, ?)",
        (Source.HOST, HOST_FORK, HOST_EXEC, HOST_EXIT),
    ).fetchall()
    ops = [r[0] for r in rows]
    assert ops.count(HOST_FORK) == 50 and ops.count(HOST_EXEC) == 50 and ops.count(HOST_EXIT) >= 50
    assert {r[1:] for r in rows} == {(0, 0, 0, 0)}


def test_300_kb_tool_argument_over_the_sdk_stdio_pair_is_captured_whole(tmp_path) -> None:
    # GIVEN the SDK client calling its stdio server with a 300 KB argument, then a 1.5 MiB one
    script = " && ".join(
        shlex.join([*CLIENT, str(tmp_path / f"ref{big}.json"), "stdio", "1", str(big), "--", *SERVER]) for big in (300_000, 1_500_000)
    )
    # WHEN spy records it with the default --max-message (1 MiB)
    rc = main(["spy", "--quiet", "--out", str(tmp_path / "s.db"), "--jsonl", str(tmp_path / "s.jsonl"), "--cmd", "--", "sh", "-c", script])
    assert rc == 0
    msgs = [m for m in jsonl(tmp_path / "s.jsonl") if m["tool_name"] == "size" and m["kind"] == "request"]
    assert len(msgs) == 2
    small, big = sorted(msgs, key=lambda m: m["size"])
    # THEN the 300 KB message is whole, argument and all
    assert small["truncated"] == 0 and small["payload"]["params"]["arguments"] == {"blob": "x" * 300_000}
    assert small["size"] > 300_000
    # AND the one over the cap is marked truncated, with its real size
    assert big["truncated"] == 1 and big["size"] > 1_500_000
    # AND the store holds the same
    conn = sqlite3.connect(tmp_path / "s.db")
    stored = conn.execute("SELECT truncated, length(payload) FROM mcp_messages WHERE tool_name = 'size' AND kind = 'request' ORDER BY size").fetchall()
    assert stored[0][0] == 0 and stored[0][1] > 300_000 and stored[1][0] == 1


def test_processes_are_named_from_records_and_live_ones_get_their_command_line_later(tmp_path) -> None:
    # GIVEN a traced python (no proc family) that starts 200 short children, then opens files for ~0.6 s
    code = (
        "import os, time, subprocess\nfor _ in range(200):\n    subprocess.run(['/bin/true'])\n"
        "t = time.monotonic()\nwhile time.monotonic() - t < 0.6:\n    open('/etc/hostname').close()\n"
    )
    proc = _gated(code)
    db = tmp_path / "t.db"
    session = TraceSession(db, [SyscallsFamily()], TargetSpec(pids=[proc.pid]), TraceOptions(snapshots=False))
    session.start()
    try:
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        session.run(lambda: proc.poll() is not None)
    finally:
        session.stop()
    conn = sqlite3.connect(db)
    # THEN every process seen has a row named from its records
    names = dict(conn.execute("SELECT pid, name FROM process_names"))
    seen = {p for (p,) in conn.execute("SELECT DISTINCT pid FROM events")}
    assert proc.pid in seen and seen <= set(names) and all(names[p] for p in seen)
    # AND the long-lived target has its command line and parent, read from /proc while it ran
    cmdline, ppid = conn.execute("SELECT cmdline, ppid FROM process_names WHERE pid = ?", (proc.pid,)).fetchone()
    assert cmdline.startswith(sys.executable) and "-c" in cmdline and ppid == os.getpid()


def test_batched_map_read_returns_every_entry_once() -> None:
    # GIVEN the syscalls object's `stats` hash map with 10,000 entries (more than two batches)
    with ProbeSet() as ps:
        fam = SyscallsFamily()
        fam.attach(ps, TargetSpec(pids=[]))
        fd = fam.obj.map_fd("stats")
        value = bytes(fam.obj.map_value_size("stats"))
        for i in range(10_000):
            map_update(fd, struct.pack("<4I", 1000 + i, 1000 + i, i % 400, 0), struct.pack("<Q", i + 1) + value[8:])
        # WHEN it is read 4,096 entries per syscall
        keys, values, n = map_items(fd, 16, len(value))
    # THEN every key comes back once, with its own value
    got = np.frombuffer(keys, "<u4").reshape(n, 4)
    counts = np.frombuffer(values, "<u8").reshape(n, -1)[:, 0]
    assert n == 10_000 and len(set(got[:, 0].tolist())) == 10_000
    assert np.array_equal(counts, got[:, 0].astype(np.uint64) - 999)
