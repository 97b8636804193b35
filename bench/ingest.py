"""Sustained ingest through the real trace session: stand-in CUDA calls -> ring -> SQLite.

1. As fast as the workload can call (2 threads): events/s stored, and how many were dropped
   (ring, writer queue) — every call is accounted for.
2. At a fixed 500k calls/s for 2 s: are there drops?
Run as root after `make bpf`:  .venv/bin/python bench/ingest.py
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from whyprobe.demo.build import build_workloads
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.cuda import CudaFamily
from whyprobe.record.session import TraceOptions, TraceSession

RATE = 500_000


def run(w, tmp: Path, name: str, flags: list[str], calls: int) -> dict:
    proc = subprocess.Popen([str(w.driver), "-w", *flags, str(w.cudart), f"cudaFree={calls}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proc.stdout.readline(), proc.stdout.readline()
    session = TraceSession(tmp / f"{name}.db", [CudaFamily([str(w.cudart)])], TargetSpec(pids=[proc.pid]), TraceOptions(ring_bytes=1 << 26))
    session.start()
    t0 = time.perf_counter()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    session.run(lambda: proc.poll() is not None)
    s = session.stop()
    wall = time.perf_counter() - t0
    index_s = session.writer.index_build_s
    out = proc.stdout.read()
    made = int(next(line.split()[1] for line in out.splitlines() if line.startswith("calls")))
    assert s.events + s.dropped == made, (s, made)
    return {"calls": made, "stored": s.events, "ring": s.ring_drops, "queue": s.queue_drops, "wall_s": wall, "rate": s.events / wall,
            "index_s": index_s, "ingest_rate": s.events / (wall - index_s)}


def main() -> None:
    w = build_workloads()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        fast = run(w, tmp, "fast", ["-t", "2"], 1_000_000)
        fixed = run(w, tmp, "fixed", ["-r", str(RATE)], 2 * RATE)
    print(f"as fast as possible (2 threads): {fast['calls']:,} calls in {fast['wall_s']:.2f} s, stored {fast['stored']:,} "
          f"({fast['rate']:,.0f} events/s end to end, commit included), dropped ring {fast['ring']:,} queue {fast['queue']:,}")
    print(f"  of which {fast['index_s']:.2f} s building the events indexes once at close: "
          f"{fast['ingest_rate']:,.0f} events/s ring -> committed rows without it")
    print(f"fixed {RATE:,} calls/s for 2 s: stored {fixed['stored']:,} of {fixed['calls']:,}, dropped ring {fixed['ring']:,} queue {fixed['queue']:,}")
    print(json.dumps([
        {"bench": "ingest_max", "value": round(fast["rate"]), "unit": "events/s", "target": RATE, "baseline": None, "ratio": round(fast["rate"] / RATE, 3)},
        {"bench": "ingest_max_before_index_build", "value": round(fast["ingest_rate"]), "unit": "events/s", "target": RATE, "baseline": None,
         "ratio": round(fast["ingest_rate"] / RATE, 3)},
        {"bench": "ingest_500k_drops", "value": fixed["ring"] + fixed["queue"], "unit": "events dropped", "target": 0, "baseline": fixed["calls"],
         "ratio": round((fixed["ring"] + fixed["queue"]) / fixed["calls"], 4)},
    ]))


if __name__ == "__main__":
    main()
