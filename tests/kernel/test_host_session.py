"""A traced shell end to end through the trace session: exec, open, connect, exit codes, host_events, probe selection."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from whyprobe.probes.base import TargetSpec
from whyprobe.probes.host import NetFamily, ProcFamily, SchedFamily, SyscallsFamily
from whyprobe.record.session import TraceSession

pytestmark = pytest.mark.usefixtures("bpf_required")


def _run_traced_shell(db: Path, families: list, script: str) -> int:
    """Start `sh` gated on stdin, trace it (children follow), release it, stop after it exits."""
    proc = subprocess.Popen(["sh", "-c", "read go; " + script], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    session = TraceSession(db, families, TargetSpec(pids=[proc.pid]))
    session.start()
    try:
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        proc.wait(timeout=30)  # stop() drains what it wrote up to its exit
    finally:
        session.stop()
    return proc.pid


@pytest.fixture
def listener():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    yield srv.getsockname()[1]
    srv.close()


def _py_connect(port: int) -> str:
    return f"{sys.executable} -c 'import socket; socket.create_connection((\"127.0.0.1\", {port})).close()'"


def test_shell_exec_open_connect_and_exit_codes_land_in_host_events(tmp_path: Path, listener: int) -> None:
    # GIVEN a shell that cats /etc/hostname, connects from Python to a local listener, exits 3
    db = tmp_path / "t.db"
    sh = _run_traced_shell(
        db, [ProcFamily(), SyscallsFamily(), NetFamily(), SchedFamily()], f"cat /etc/hostname; {_py_connect(listener)}; exit 3"
    )
    conn = sqlite3.connect(db)
    # THEN both execs are recorded with their argv, in the children the kernel enrolled
    execs = conn.execute("SELECT pid, detail FROM events WHERE source = 3 AND op = 5 ORDER BY timestamp").fetchall()
    assert [d for _, d in execs][0] == "cat /etc/hostname"
    assert "socket.create_connection" in execs[1][1]
    cat_pid, py_pid = execs[0][0], execs[1][0]
    assert sh not in (cat_pid, py_pid)
    # AND cat's openat of /etc/hostname succeeded, and Python's connect names the endpoint
    assert conn.execute(
        "SELECT ret_code >= 0 FROM events WHERE source = 8 AND op = 257 AND pid = ? AND detail = '/etc/hostname'", (cat_pid,)
    ).fetchall() == [(1,)]
    assert conn.execute("SELECT detail, ret_code FROM events WHERE source = 8 AND op = 42 AND pid = ?", (py_pid,)).fetchall() == [
        (f"127.0.0.1:{listener}", 0)
    ]
    # AND every process has its exit code and exit time, although all exited mid-trace
    exits = dict(conn.execute("SELECT pid, exit_code FROM process_names WHERE exited_at > 0").fetchall())
    assert exits == {sh: 3, cat_pid: 0, py_pid: 0}
    assert conn.execute("SELECT exe FROM process_names WHERE pid = ?", (cat_pid,)).fetchone() == ("/usr/bin/cat",)
    # AND the query people type works as typed
    rows = conn.execute(
        "SELECT comm, syscall, COUNT(*) AS n FROM host_events GROUP BY comm, syscall ORDER BY n DESC LIMIT 20"
    ).fetchall()
    assert ("cat", "openat") in {(c, s) for c, s, _ in rows}
    assert conn.execute("SELECT syscall, detail FROM host_events WHERE pid = ? AND syscall = 'connect'", (py_pid,)).fetchall() == [
        ("connect", f"127.0.0.1:{listener}")
    ]
    # AND exact per-thread syscall counts were flushed: cat opened /etc/hostname through openat at least once
    [(count, errors)] = conn.execute("SELECT count, errors FROM syscall_stats WHERE pid = ? AND nr = 257", (cat_pid,)).fetchall()
    opens = conn.execute("SELECT COUNT(*), SUM(ret_code < 0) FROM events WHERE source = 8 AND op = 257 AND pid = ?", (cat_pid,)).fetchone()
    assert (count, errors) == opens


def test_probes_left_out_record_nothing(tmp_path: Path, listener: int) -> None:
    # GIVEN only the proc family selected
    db = tmp_path / "t.db"
    _run_traced_shell(db, [ProcFamily()], f"cat /etc/hostname; {_py_connect(listener)}")
    conn = sqlite3.connect(db)
    sources = {s for (s,) in conn.execute("SELECT DISTINCT source FROM events")}
    # THEN only lifecycle events exist: no syscalls, no off-CPU, no socket calls, no stats
    assert sources == {3}
    assert {op for (op,) in conn.execute("SELECT DISTINCT op FROM events")} <= {5, 6, 7}
    assert conn.execute("SELECT COUNT(*) FROM syscall_stats").fetchone() == (0,)


# The waker thread blocks once under its inherited name (its first off-CPU record says "python"),
# then renames itself and wakes the reader: the trace must know it by the new name.
RENAMED_WAKER = (
    "import os, threading, time\n"
    "r, w = os.pipe()\n"
    "tids = {}\n"
    "def waker():\n"
    "    tids['waker'] = threading.get_native_id()\n"
    "    time.sleep(0.2)\n"
    "    with open(f'/proc/self/task/{tids[\"waker\"]}/comm', 'w') as f:\n"
    "        f.write('renamed-waker')\n"
    "    time.sleep(0.2)\n"
    "    os.write(w, b'x')\n"
    "t = threading.Thread(target=waker); t.start()\n"
    "os.read(r, 1); t.join()\n"
    "print(tids['waker'], flush=True)\n"
)


def test_a_thread_renamed_after_its_first_record_is_known_by_its_new_name(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()\n" + RENAMED_WAKER],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    session = TraceSession(db, [SchedFamily()], TargetSpec(pids=[proc.pid]))
    session.start()
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        waker = int(proc.stdout.readline())
        proc.wait(timeout=30)
    finally:
        session.stop()
    conn = sqlite3.connect(db)
    # THEN the main thread's long blocked interval names the waker, and the waker goes by its new name
    woken = conn.execute("SELECT aux FROM events WHERE tid = ? AND source = 3 AND op = 1 ORDER BY duration DESC LIMIT 1", (proc.pid,)).fetchone()
    assert woken == (waker,)
    assert conn.execute("SELECT comm FROM thread_names WHERE tid = ?", (waker,)).fetchone() == ("renamed-waker",)
