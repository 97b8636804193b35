"""Targeting in the kernel (bpf/follow.bpf.c, record/follow.py): a library loaded late from any path
(CUDA runtime, a config uprobe library, OpenSSL) is probed before its first call, a held target never
stays stopped (not even when the tracer is SIGKILLed), children are followed whatever the probe
families are, and a program started through a shim is named as itself."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cuda_helpers import REAL_CUDART, trace_released
from testkit import wait_until
from whyprobe.demo.build import build_workloads
from whyprobe.events import op_by_name
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.cuda import CudaFamily
from whyprobe.probes.libs import ldconfig_cache
from whyprobe.probes.wire import WireFamily
from whyprobe.record.session import TraceOptions, TraceSession

LAUNCH = op_by_name("cudaLaunchKernel").op
HELPER = Path(__file__).resolve().parent / "hold_forever.py"


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]




@pytest.mark.parametrize("runtime", ["standin", "real"])
def test_runtime_dlopened_from_a_temp_dir_loses_no_call(bpf_required, tmp_path, runtime):
    # GIVEN a CUDA runtime copied to a directory no search path names, and a target that, once told,
    # execs the call driver, which dlopens it and calls cudaLaunchKernel 300,000 times at once
    w = build_workloads()
    src = w.cudart if runtime == "standin" else REAL_CUDART
    lib = tmp_path / "private" / "libcudart.so.12"
    lib.parent.mkdir()
    shutil.copy(src, lib)
    proc = subprocess.Popen(["sh", "-c", 'read go; exec "$0" "$1" cudaLaunchKernel=300000', str(w.driver), str(lib)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    # AND a trace of it without --lib: nothing CUDA is mapped yet, so nothing is attached at start
    fam = CudaFamily()
    # (a ring that holds every call: this test is about the attach, not about how fast a loaded host drains)
    session = TraceSession(tmp_path / "t.db", [fam], TargetSpec(pids=[proc.pid]), TraceOptions(snapshots=False, ring_bytes=1 << 26))
    try:
        session.start()
        assert fam.attached == {}
        # WHEN it loads the runtime and calls
        proc.stdin.write("go\n")
        proc.stdin.flush()
        session.run(lambda: proc.poll() is not None)
    finally:
        summary = session.stop()
    out = proc.stdout.read()
    assert proc.wait() == 0, out
    assert "calls 300000" in out
    # THEN every call is recorded, with the runtime's return code, and nothing was dropped
    db = sqlite3.connect(tmp_path / "t.db")
    rows = db.execute("SELECT COUNT(*), MIN(ret_code), MAX(ret_code) FROM events WHERE source = 1 AND op = ?", (LAUNCH,)).fetchone()
    expected_ret = 0 if runtime == "standin" else 35
    assert rows == (300000, expected_ret, expected_ret)
    assert summary.dropped == 0
    # AND the session says the process was held at the open of that file, and attached no later than that
    flags = json.loads(db.execute("SELECT flags FROM sessions").fetchone()[0])
    assert [(h["pid"], h["path"]) for h in flags["held_loads"]] == [(proc.pid, str(lib))]
    assert flags["cuda_late_attach"] == []
    assert list(fam.attached) == [str(lib)]


def test_held_target_goes_on_when_the_tracer_is_killed(bpf_required, tmp_path):
    # GIVEN a target that opens a library whose family never finishes attaching (it blocks forever)
    lib = tmp_path / "libwphold.so.1"
    lib.write_bytes(b"not really a library")
    target = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline(); open(sys.argv[1]).close(); print('opened', flush=True)", str(lib)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    tracer = subprocess.Popen([sys.executable, str(HELPER), str(tmp_path / "t.db"), str(target.pid), "libwphold.so"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert tracer.stdout.readline().strip() == "ready"
        # WHEN the target opens it, the kernel stops it and the tracer is holding it
        target.stdin.write("go\n")
        target.stdin.flush()
        assert tracer.stdout.readline().split() == ["holding", str(target.pid), str(lib)]
        assert wait_until(lambda: _state(target.pid) == "T", 20.0)
        time.sleep(0.3)  # held: it must not go on by itself while the tracer lives
        assert _state(target.pid) == "T"
        # AND the tracer is killed with SIGKILL while holding it
        tracer.send_signal(signal.SIGKILL)
        tracer.wait(10)
        # THEN the watchdog continues it: the open returns and the target finishes normally
        assert target.stdout.readline().strip() == "opened"
        assert target.wait(20) == 0
    finally:
        for p in (tracer, target):
            if p.poll() is None:
                p.kill()


@pytest.mark.parametrize("probes", ["sched,syscalls,net"])
def test_children_are_followed_without_the_proc_family(bpf_required, tmp_path, probes):
    # GIVEN a Python script that runs `cat` on a file, traced with families that do not include proc
    data = tmp_path / "data.txt"
    data.write_text("x" * 10)
    script = tmp_path / "w.py"
    script.write_text(f"import subprocess\nsubprocess.run(['cat', {str(data)!r}], check=True, stdout=subprocess.DEVNULL)\n")
    db = tmp_path / "t.db"
    res = subprocess.run([sys.executable, "-m", "whyprobe", "trace", "--probes", probes, "--quiet", "--out", str(db), "--cmd", "--",
                          sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    # THEN cat's own syscalls are recorded: it opened the file (openat, with its path) under its own name
    con = sqlite3.connect(db)
    rows = con.execute("SELECT comm, COUNT(*) FROM host_events WHERE syscall = 'openat' AND detail = ? GROUP BY comm", (str(data),)).fetchall()
    assert rows == [("cat", 1)]


def test_custom_uprobe_library_loaded_late_from_another_path(bpf_required, tmp_path):
    # GIVEN a config uprobe on cudaFree of the stand-in runtime at its build path
    from whyprobe.config import UprobeSpec
    from whyprobe.probes.custom import CustomFamily

    w = build_workloads()
    lib = tmp_path / "elsewhere" / "libcudart.so.12"
    lib.parent.mkdir()
    shutil.copy(w.cudart, lib)
    fam = CustomFamily(uprobes=[UprobeSpec(library=str(w.cudart), symbol="cudaFree", attach="both")])
    # AND a target that, once told, execs the driver on a copy with the same base name elsewhere
    proc = subprocess.Popen(["sh", "-c", 'read go; exec "$0" "$1" cudaFree=57', str(w.driver), str(lib)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    trace_released(tmp_path / "t.db", [fam], proc, TraceOptions(snapshots=False))
    assert proc.wait() == 0
    # THEN the copy was probed at its open: all 57 calls are recorded as the custom probe's op
    con = sqlite3.connect(tmp_path / "t.db")
    assert con.execute("SELECT COUNT(*) FROM events WHERE source = 9 AND op = 0 AND pid = ?", (proc.pid,)).fetchone() == (57,)


@pytest.mark.parametrize("probes", ["cuda,sched,block,net,syscalls,proc", "sched,syscalls"])
def test_python_started_through_a_bash_shim_is_named_python(bpf_required, tmp_path, probes):
    # GIVEN a version-manager-like shim: a bash script that runs helpers, then execs the interpreter
    shim = tmp_path / "python3"
    shim.write_text(f"#!/bin/bash\nfor i in $(seq 20); do /bin/true; v=$(cat /proc/version); done\nexec {sys.executable} \"$@\"\n")
    shim.chmod(0o755)
    code = "import psutil; print(open('/proc/self/comm').read().strip()); print(psutil.Process().create_time())"
    for run in range(3):  # the stale name showed up 1 run in 3
        db = tmp_path / f"t{run}.db"
        res = subprocess.run([sys.executable, "-m", "whyprobe", "trace", "--probes", probes, "--quiet", "--out", str(db), "--cmd", "--",
                              str(shim), "-c", code], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        comm = res.stdout.strip().splitlines()[0]  # the interpreter's own name for itself
        con = sqlite3.connect(db)
        pid = int(con.execute("SELECT pid_filter FROM sessions").fetchone()[0])  # the launched shim
        # THEN the shim's pid is the interpreter everywhere: its thread, its process row, and its events
        assert con.execute("SELECT comm FROM thread_names WHERE tid = ?", (pid,)).fetchone() == (comm,)
        name, exe, cmdline = con.execute("SELECT name, exe, cmdline FROM process_names WHERE pid = ?", (pid,)).fetchone()
        assert name == comm and os.path.realpath(exe) == os.path.realpath(sys.executable), run
        assert "-c" in cmdline and "bash" not in cmdline, run
        # AND its start comes from the kernel's exec notice (psutil's own reading is whole jiffies after a whole-second boot time)
        started = con.execute("SELECT started_at FROM process_names WHERE pid = ?", (pid,)).fetchone()[0]
        assert abs(started / 1e9 - float(res.stdout.split()[1])) < 1.1, run
        opens = con.execute("SELECT comm FROM host_events WHERE pid = ? AND syscall = 'openat' AND detail = '/proc/self/comm'", (pid,)).fetchall()
        assert opens == [(comm,)], run


def test_openssl_copy_loaded_late_is_probed_before_the_loader_runs_on(bpf_required, tmp_path):
    # GIVEN a private copy of libssl (as wheels and conda ship their own), loaded only when told
    system = next(path for soname, path in ldconfig_cache() if soname == "libssl.so.3")
    lib = tmp_path / "bundled" / "libssl.so.3"
    lib.parent.mkdir()
    shutil.copy(system, lib)
    proc = subprocess.Popen([sys.executable, "-c", "import sys, ctypes; sys.stdin.readline(); ctypes.CDLL(sys.argv[1]); print('loaded', flush=True); sys.stdin.readline()",
                             str(lib)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    fam = WireFamily()
    session = TraceSession(tmp_path / "t.db", [fam], TargetSpec(pids=[proc.pid]), TraceOptions(snapshots=False))
    try:
        session.start()
        assert str(lib) not in fam.tls_libraries
        # WHEN it loads the copy
        proc.stdin.write("load\n")
        proc.stdin.flush()
        # THEN by the time its dlopen returned, SSL_read/SSL_write of that copy were probed
        assert proc.stdout.readline().strip() == "loaded"
        assert str(lib) in fam.tls_libraries
        proc.stdin.write("exit\n")
        proc.stdin.flush()
        session.run(lambda: proc.poll() is not None)
    finally:
        session.stop()
    assert proc.wait() == 0
