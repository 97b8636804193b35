"""`trace --all` (the per-host daemon mode) keeps up like `--pid`: a busy CUDA process started while
the host is traced is recorded call for call, with nothing dropped, and the tracer never traces itself."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from whyprobe.demo.build import build_workloads
from whyprobe.events import op_by_name

MALLOC = op_by_name("cudaMalloc").op


def test_all_records_a_busy_cuda_process_exactly(bpf_required, tmp_path):
    # GIVEN the whole host traced with the default probes and no --lib
    w = build_workloads()
    db = tmp_path / "all.db"
    tracer = subprocess.Popen([sys.executable, "-m", "whyprobe", "trace", "--all", "--duration", "60s", "--quiet", "--out", str(db)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in tracer.stderr:
            if "ready" in line:
                break
        # WHEN a process loads the stand-in runtime and calls cudaMalloc 2,000 times a second for 3 s
        work = subprocess.run([str(w.driver), "-r", "2000", str(w.cudart), "cudaMalloc=6000"], capture_output=True, text=True, timeout=60)
        assert work.returncode == 0 and "calls 6000" in work.stdout, work.stdout
        tracer.send_signal(2)
        out, err = tracer.communicate(timeout=120)
    finally:
        if tracer.poll() is None:
            tracer.kill()
    assert tracer.returncode == 0, err
    # THEN nothing was dropped anywhere, and every call of that process is there with its size
    assert " 0 dropped)" in out, out
    con = sqlite3.connect(db)
    assert con.execute("SELECT ring_drops, queue_drops, rate_drops FROM sessions").fetchone() == (0, 0, 0)
    pid = con.execute("SELECT pid FROM process_names WHERE exe = ?", (str(w.driver),)).fetchone()[0]
    assert con.execute("SELECT COUNT(*), MIN(arg0), MAX(arg0), MAX(ret_code) FROM events WHERE pid = ? AND source = 1 AND op = ?",
                       (pid, MALLOC)).fetchone() == (6000, 4096, 4096, 0)
    # AND the tracer is not in its own trace (its drain and writes would feed back into the ring)
    assert con.execute("SELECT COUNT(*) FROM events WHERE pid = ?", (tracer.pid,)).fetchone() == (0,)
