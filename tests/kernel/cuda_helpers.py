"""Run the C call driver under a real trace session (shared by the cuda_/trace_ kernel tests)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from whyprobe.demo.build import build_workloads
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.cuda import CudaFamily
from whyprobe.record.session import TraceOptions, TraceSession, TraceSummary
from whyprobe.store.reader import open_trace

REAL_CUDART = next(Path(sys.prefix).glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12"))


@dataclass
class Traced:
    summary: TraceSummary
    stdout: str
    db: Path
    pid: int

    def events(self, where: str = "source IN (1, 4)", params: tuple = ()):
        db = open_trace(self.db)
        try:
            return db.load_events(where, params)
        finally:
            db.close()


def trace_released(db: Path, families: list, proc: subprocess.Popen, options: TraceOptions | None = None) -> TraceSummary:
    """Trace `proc` (waiting on stdin) with `families`: attach, send it "go", record until it exits."""
    session = TraceSession(db, families, TargetSpec(pids=[proc.pid]), options or TraceOptions(ring_bytes=1 << 22))
    try:
        session.start()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        session.run(lambda: proc.poll() is not None)
    finally:
        summary = session.stop()
    return summary


def trace_workload(tmp_path: Path, lib: str, plan: list[str], *flags: str, env: dict | None = None, options: TraceOptions | None = None,
                   family: CudaFamily | None = None) -> Traced:
    """Start the driver held (-w), attach the CUDA family to `lib`, release it, trace until it exits."""
    w = build_workloads()
    proc = subprocess.Popen([str(w.driver), "-w", *flags, lib, *plan], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().startswith("kernel ")
    assert proc.stdout.readline().startswith("ready ")
    summary = trace_released(tmp_path / "t.db", [family or CudaFamily([lib])], proc, options)
    out = proc.stdout.read()
    assert proc.wait() == 0, out
    return Traced(summary, out, tmp_path / "t.db", proc.pid)
