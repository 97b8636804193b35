"""Differential test against an independent recorder: bpftrace 0.17 and whyprobe watch the same workload
(a shell that execs helpers, opens files and ends in the CUDA call driver) and must count the same execs,
openat calls and cudaLaunchKernel calls.

bpftrace selects the workload by its cgroup (the kernel's grouping, set before the workload starts); whyprobe
by its pid, following children itself. A disagreement is a bug in one of the two."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from whyprobe.demo.build import build_workloads
from whyprobe.events import op_by_name
from whyprobe.syscalls_x86_64 import syscall_nr

# The cgroup2 root (hybrid hosts mount it at unified/): only cgroup2 directories have cgroup.subtree_control.
CGROUP2 = next((p for p in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")) if (p / "cgroup.subtree_control").exists()), None)
SCRIPT = """read go
for i in $(seq 20); do /bin/true; done
for f in /etc/hostname /etc/passwd /etc/hosts; do cat "$f" > /dev/null; done
exec "$0" "$1" cudaLaunchKernel=5000
"""


def _bpftrace_program(cgroup_id: int, lib: str) -> str:
    sel = f"/cgroup == {cgroup_id}/"
    return (
        'BEGIN { printf("ready\\n"); } '
        f"tracepoint:sched:sched_process_exec {sel} {{ @execs = count(); }} "
        f"tracepoint:syscalls:sys_enter_openat {sel} {{ @openat = count(); }} "
        f"uprobe:{lib}:cudaLaunchKernel {sel} {{ @launches = count(); }}"
    )


def test_whyprobe_and_bpftrace_count_the_same(bpf_required, tmp_path):
    if shutil.which("bpftrace") is None or CGROUP2 is None:
        pytest.fail("bpftrace and a cgroup2 hierarchy are needed (make deps installs bpftrace)")
    w = build_workloads()
    # GIVEN the workload shell, held on its first line, alone in a new cgroup
    group = CGROUP2 / f"whyprobe-diff-{os.getpid()}"
    group.mkdir()
    sh = subprocess.Popen(["sh", "-c", SCRIPT, str(w.driver), str(w.cudart)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    bt = tracer = None
    try:
        (group / "cgroup.procs").write_text(str(sh.pid))
        # AND bpftrace counting that cgroup's execs, openat calls and launches
        bt = subprocess.Popen(["bpftrace", "-e", _bpftrace_program(os.stat(group).st_ino, str(w.cudart))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert any(line.strip() == "ready" for line in bt.stdout), bt.stderr.read()
        # AND whyprobe tracing the shell by pid, with the default probes and no --lib
        db = tmp_path / "t.db"
        tracer = subprocess.Popen([sys.executable, "-m", "whyprobe", "trace", "--pid", str(sh.pid), "--quiet", "--out", str(db)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert any("ready" in line for line in tracer.stderr)
        # WHEN the workload runs to its end
        sh.stdin.write("go\n")
        sh.stdin.flush()
        out = sh.stdout.read()
        assert sh.wait(60) == 0 and "calls 5000" in out, out
        # (whyprobe stops by itself once every traced process is gone)
        tr_out, tr_err = tracer.communicate(timeout=120)
        assert tracer.returncode == 0, tr_err
        bt.send_signal(signal.SIGINT)
        bt_out, _ = bt.communicate(timeout=180)
    finally:
        for p in (sh, bt, tracer):
            if p is not None and p.poll() is None:
                p.kill()
        group.rmdir()
    counts = {k: int(v) for k, v in re.findall(r"@(\w+): (\d+)", bt_out)}
    con = sqlite3.connect(db)
    ours = {
        "execs": con.execute("SELECT COUNT(*) FROM events WHERE source = 3 AND op = 5").fetchone()[0],
        "openat": con.execute("SELECT COALESCE(SUM(count), 0) FROM syscall_stats WHERE nr = ?", (syscall_nr("openat"),)).fetchone()[0],
        "launches": con.execute("SELECT COUNT(*) FROM events WHERE source = 1 AND op = ?", (op_by_name("cudaLaunchKernel").op,)).fetchone()[0],
    }
    # THEN both recorders agree on every count (how many execs and opens the shell makes is its business;
    # at least 20 x true, 3 x cat, seq and the driver), with exactly 5,000 launches and nothing dropped
    assert ours == counts, (ours, counts, tr_out)
    assert ours["launches"] == 5000
    assert ours["execs"] >= 20 + 3 + 1 and ours["openat"] > 0
    assert " 0 dropped)" in tr_out, tr_out
