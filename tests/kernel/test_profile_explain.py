"""On-CPU samples (the profile family, real perf_event + BPF) tell explain what a thread ran in its GPU gaps.

The workload is a Python loop that launches bursts of kernels through the
stand-in runtime and, between bursts, computes in compute_logprobs() on one
source line: the GPU-starved finding must name that function, its file and
that line, with most of the gap samples.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from whyprobe.analyze.explain import explain
from whyprobe.commands import main
from whyprobe.demo.build import build_workloads
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.profile import ProfileFamily
from whyprobe.probes.stacks import StacksFamily
from whyprobe.record.session import TraceOptions, TraceSession
from whyprobe.store.reader import open_trace

pytestmark = pytest.mark.usefixtures("bpf_required")

WORK = textwrap.dedent(
    """
    import ctypes, sys, time
    lib = ctypes.CDLL(sys.argv[1])


    class dim3(ctypes.Structure):
        _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


    lib.cudaLaunchKernel.argtypes = [ctypes.c_void_p, dim3, dim3, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]


    def compute_logprobs(cpu_seconds):
        end, i = time.thread_time() + cpu_seconds, 0
        while time.thread_time() < end: i += 1
        return i


    def step():
        for _ in range(20):
            lib.cudaLaunchKernel(0x1234, dim3(1, 1, 1), dim3(32, 1, 1), None, 0, None)


    for _ in range(6):
        step()
        compute_logprobs(0.15)
    step()
    """
)
HOT_LINE = WORK.splitlines().index("    while time.thread_time() < end: i += 1") + 1


def test_gap_finding_names_the_function_the_thread_computes_in(tmp_path: Path, capsys) -> None:
    # GIVEN a Python engine loop: 7 bursts of 20 launches, 150 ms of CPU in compute_logprobs between them
    cudart = str(build_workloads().cudart)
    work = tmp_path / "engine.py"
    work.write_text(WORK)
    out = tmp_path / "t.db"
    # WHEN it is traced with the default on-CPU sampling (profile) and the scheduler
    rc = main(["trace", "--probes", "cuda,sched,profile", "--lib", cudart, "--out", str(out), "--quiet",
               "--cmd", "--", sys.executable, str(work), cudart])
    assert rc == 0, capsys.readouterr().err
    con = sqlite3.connect(out)
    assert con.execute("SELECT COUNT(*) FROM events WHERE source = 1 AND op = 3").fetchone()[0] == 140
    assert json.loads(con.execute("SELECT flags FROM sessions").fetchone()[0])["profile"]["hz"] == 99
    with open_trace(out) as db:
        doc = explain(db)
    # THEN the GPU-starved finding of that thread names compute_logprobs at its hot line with a majority of the gap samples
    gap = next(f for f in doc["findings"] if f["kind"] == "gap")
    assert gap["slow_calls"] == 6 and not gap["minor"]
    on_cpu = next(c for c in gap["causes"] if c["kind"] == "on_cpu")
    top = on_cpu["frames"][0]
    assert (top["function"], Path(top["file"]).name, top["line"]) == ("compute_logprobs", "engine.py", HOT_LINE)
    assert top["share"] > 0.5 and on_cpu["samples"] >= 10
    assert f"of gap samples in engine.py:{HOT_LINE} compute_logprobs" in gap["summary"]
    # AND the advice is about that computation, not DataLoader workers (no data-loading frame was sampled)
    fix = " ".join(gap["recommendations"])
    assert "`compute_logprobs`" in fix and "critical path" in fix and "DataLoader" not in fix


def test_stacks_on_cpu_lists_the_samples_and_refuses_a_trace_without_them(tmp_path: Path, capsys, shared_data: Path) -> None:
    # GIVEN a short traced Python computation
    work = tmp_path / "spin.py"
    work.write_text("import time\ndef spin():\n    end = time.thread_time() + 0.3\n    while time.thread_time() < end: pass\nspin()\n")
    out = tmp_path / "t.db"
    assert main(["trace", "--probes", "profile", "--out", str(out), "--quiet", "--cmd", "--", sys.executable, str(work)]) == 0
    capsys.readouterr()
    # WHEN its on-CPU stacks are asked for
    assert main(["stacks", str(out), "--on-cpu", "--json"]) == 0
    stacks = json.loads(capsys.readouterr().out)
    # THEN they are samples, and the hottest ones run spin() at its loop line
    assert stacks and all(s["op"] == "cpu_sample" for s in stacks)
    assert "spin (" in stacks[0]["frames"][0] and "spin.py:4)" in stacks[0]["frames"][0]
    # AND a trace without samples gets one clear line
    assert main(["stacks", str(shared_data / "pytorch-dataloader-starvation.db"), "--on-cpu"]) == 1
    assert capsys.readouterr().err.strip().endswith("has no on-CPU samples: record with `whyprobe trace` (the profile family is on by default)")


def test_samples_are_of_traced_threads_only_with_their_frames(tmp_path: Path) -> None:
    # GIVEN two identical spinning Python processes, only the first traced, with on-CPU sampling
    spin = "import sys, time\ndef spin():\n    end = time.thread_time() + 0.4\n    while time.thread_time() < end: pass\nsys.stdin.readline()\nspin()\n"
    procs = [subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, text=True) for _ in range(2)]
    session = TraceSession(tmp_path / "t.db", [ProfileFamily(required=True), StacksFamily()], TargetSpec(pids=[procs[0].pid]),
                           TraceOptions(ring_bytes=1 << 22))
    try:
        session.start()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        session.run(lambda: all(p.poll() is not None for p in procs))
    finally:
        session.stop()
    # THEN every sample is the traced process's, a HOST/cpu_sample instant with the period in arg0,
    # arg1 saying user (0) or kernel (1) mode, and nearly all carry spin() at its loop line as the
    # innermost Python frame (a few may be taken at start-up or in the collector at exit)
    con = sqlite3.connect(tmp_path / "t.db")
    rows = con.execute("SELECT pid, duration, arg0, arg1 FROM events WHERE source = 3 AND op = 16").fetchall()
    assert len(rows) >= 10 and {r[0] for r in rows} == {procs[0].pid}
    assert {(r[1], r[2]) for r in rows} == {(0, 1_000_000_000 // 99)} and {r[3] for r in rows} <= {0, 1}
    innermost = []
    for (raw,) in con.execute("SELECT s.frames FROM events e JOIN stack_traces s ON s.hash = e.stack_hash WHERE e.source = 3 AND e.op = 16"):
        py = [f for f in json.loads(raw) if f.get("py")]
        if py:
            innermost.append((py[0]["s"], py[0]["l"]))
    assert innermost.count(("spin", 4)) >= 0.8 * len(rows)
