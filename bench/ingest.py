"""Sustained ingest through the real trace session: events -> ring -> SQLite.

Isolated (whyprobe's own path): bpf/bench_producer.bpf.c writes real cudaFree
records into the session's ring through wp_reserve() (ring drops counted like
the probes'), called from a thread with BPF_PROG_TEST_RUN, ~70 ns an event;
the real TraceSession (same ring size, reader, writer) drains them.
  1. Max: 3 M events as fast as the ring takes them (the producer refills
     whenever the ring is less than half full, so its own CPU is only what the
     events cost): events/s stored, drops, every event accounted for.
  2. At a fixed 500 k events/s for 2 s (batches of 5000 on a schedule): drops?
  Side by side with 1., the same producer on the two paths host churn takes:
  - details: openat events, each after its path payload (payload ring, bulk
    join of path to event, detail column); target >= 300 k events/s.
  - new processes: every event from a pid the session has not seen (thread
    and process names).

End to end (uprobe cost included): the stand-in CUDA workload's cudaFree
calls, caught by the real uprobes. On a 2-core host each traced call costs
~1.7 us of kernel time in the workload's threads, so this measures the
producer as much as whyprobe.
  3. As fast as the workload can call (2 threads).
  4. At a fixed 500 k calls/s for 2 s.

Run as root after `make bpf`:  .venv/bin/python bench/ingest.py
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from whyprobe.demo.build import build_workloads
from whyprobe.kernel.ring import RingReader
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.cuda import CudaFamily
from whyprobe.events import EVENT_DTYPE, PAYLOAD_DTYPE
from whyprobe.record.session import TraceOptions, TraceSession

TARGET = 1_000_000  # the sustained ingest target
DETAIL_TARGET = 300_000  # events/s with a path each (issue 16)
DETAIL_EVENTS = 1_000_000
NEW_PROCESS_EVENTS = 300_000
MODES = {"fixed": 0, "details": 1, "new_processes": 2}  # bench_producer.bpf.c
RATE = 500_000  # fixed rate that must lose nothing
RING = 1 << 26
MAX_EVENTS = 3_000_000
BATCH = 5000
CALL_NS = 20_000  # duration the producer gives its events


class BenchProducerFamily:
    """Loads bench_producer into the session's ProbeSet, so it shares the event ring and drop counters."""

    name = "bench"

    def __init__(self, mode: int = 0) -> None:
        self.obj = None
        self.mode = mode

    def attach(self, probes, targets: TargetSpec) -> list[str]:
        self.obj = probes.open("bench_producer")
        self.obj.load()
        return []

    def on_batch(self, records) -> None:
        return None

    def finish(self, probes, writer) -> None:
        return None


def _produce(fam: BenchProducerFamily, n: int, seq: int) -> int:
    # New-process events take pids from 1,000,000 + seq on: above any real pid here.
    pid = 1_000_000 + seq if fam.mode == MODES["new_processes"] else os.getpid()
    ctx = struct.pack("<6Q", n, pid, threading.get_native_id() if fam.mode != MODES["new_processes"] else pid, seq, CALL_NS, fam.mode)
    return fam.obj.test_run("produce", ctx)


def _producer(fam: BenchProducerFamily, session: TraceSession, total: int, rate: int | None, out: dict) -> None:
    """Make `total` events: at `rate`/s on a schedule, or (rate None) whenever the ring is under half full."""
    # Wait on both rings: path payloads fill theirs as fast as the events fill the event ring.
    peek = RingReader(session.probes.events_fd, EVENT_DTYPE) if rate is None else None
    peek_payloads = RingReader(session.probes.payloads_fd, PAYLOAD_DTYPE) if rate is None else None
    made = written = 0
    t0 = time.perf_counter()
    try:
        while made < total:
            n = min(BATCH, total - made)
            if rate is None:
                while peek.available_bytes() > RING // 2 or peek_payloads.available_bytes() > peek_payloads.size // 2:
                    time.sleep(0.0005)
            else:
                delay = t0 + made / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            written += _produce(fam, n, made)
            made += n
    finally:
        if peek is not None:
            peek.close()
            peek_payloads.close()
        out.update(made=made, written=written, produce_s=time.perf_counter() - t0)


def _result(s, made: int, wall: float, index_s: float) -> dict:
    return {"made": made, "stored": s.events, "ring": s.ring_drops, "queue": s.queue_drops, "wall_s": wall,
            "rate": s.events / wall, "index_s": index_s, "ingest_rate": s.events / (wall - index_s)}


def run_isolated(tmp: Path, name: str, total: int, rate: int | None, mode: str = "fixed") -> dict:
    fam = BenchProducerFamily(MODES[mode])
    session = TraceSession(tmp / f"{name}.db", [fam], TargetSpec(pids=[os.getpid()]), TraceOptions(ring_bytes=RING))
    session.start()
    made: dict = {}
    t0 = time.perf_counter()
    producer = threading.Thread(target=_producer, args=(fam, session, total, rate, made), name="bench-producer")
    producer.start()
    session.run(lambda: not producer.is_alive())
    producer.join()
    s = session.stop()
    wall = time.perf_counter() - t0
    assert made["made"] == total, made
    # Every event is stored or counted as dropped, on the kernel's word (written) and the session's.
    assert made["made"] - made["written"] == s.ring_drops, (made, s)
    assert s.events + s.dropped == made["made"], (s, made)
    r = _result(s, made["made"], wall, session.writer.index_build_s)
    r["payloads_lost"] = s.payload_drops
    if mode == "details":
        with sqlite3.connect(tmp / f"{name}.db") as conn:
            r["with_detail"] = conn.execute("SELECT COUNT(detail) FROM events").fetchone()[0]
    return r


def run_uprobes(w, tmp: Path, name: str, flags: list[str], calls: int) -> dict:
    proc = subprocess.Popen([str(w.driver), "-w", *flags, str(w.cudart), f"cudaFree={calls}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proc.stdout.readline(), proc.stdout.readline()
    session = TraceSession(tmp / f"{name}.db", [CudaFamily([str(w.cudart)])], TargetSpec(pids=[proc.pid]), TraceOptions(ring_bytes=RING))
    session.start()
    t0 = time.perf_counter()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    session.run(lambda: proc.poll() is not None)
    s = session.stop()
    wall = time.perf_counter() - t0
    out = proc.stdout.read()
    made = int(next(line.split()[1] for line in out.splitlines() if line.startswith("calls")))
    assert s.events + s.dropped == made, (s, made)
    return _result(s, made, wall, session.writer.index_build_s)


def _max_line(label: str, r: dict) -> str:
    return (f"{label}: {r['made']:,} events in {r['wall_s']:.2f} s, stored {r['stored']:,} ({r['rate']:,.0f} events/s, "
            f"commit and index build included; {r['ingest_rate']:,.0f} events/s without the {r['index_s']:.2f} s one-time "
            f"index build at close), dropped ring {r['ring']:,} queue {r['queue']:,}")


def _fixed_line(label: str, r: dict) -> str:
    return f"{label}: stored {r['stored']:,} of {r['made']:,}, dropped ring {r['ring']:,} queue {r['queue']:,}"


def _entries(prefix: str, fast: dict, fixed: dict) -> list[dict]:
    dropped = fixed["ring"] + fixed["queue"]
    return [
        {"bench": f"{prefix}_max", "value": round(fast["rate"]), "unit": "events/s", "target": TARGET, "baseline": None,
         "ratio": round(fast["rate"] / TARGET, 3)},
        {"bench": f"{prefix}_max_before_index_build", "value": round(fast["ingest_rate"]), "unit": "events/s", "target": TARGET,
         "baseline": None, "ratio": round(fast["ingest_rate"] / TARGET, 3)},
        {"bench": f"{prefix}_500k_drops", "value": dropped, "unit": "events dropped", "target": 0, "baseline": fixed["made"],
         "ratio": round(dropped / fixed["made"], 4)},
    ]


def main() -> None:
    w = build_workloads()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        iso_fast = run_isolated(tmp, "iso_fast", MAX_EVENTS, None)
        iso_fixed = run_isolated(tmp, "iso_fixed", 2 * RATE, RATE)
        details = run_isolated(tmp, "iso_details", DETAIL_EVENTS, None, "details")
        newproc = run_isolated(tmp, "iso_newproc", NEW_PROCESS_EVENTS, None, "new_processes")
        e2e_fast = run_uprobes(w, tmp, "e2e_fast", ["-t", "2"], 1_000_000)
        e2e_fixed = run_uprobes(w, tmp, "e2e_fixed", ["-r", str(RATE)], 2 * RATE)
    print("isolated: in-kernel producer (BPF_PROG_TEST_RUN) -> ring -> TraceSession -> SQLite")
    print("  " + _max_line("max (as fast as the ring takes them)", iso_fast))
    print("  " + _fixed_line(f"fixed {RATE:,} events/s for 2 s", iso_fixed))
    print("  " + _max_line("details (openat + path payload each)", details)
          + f", {details['with_detail']:,} stored with their path, {details['payloads_lost']:,} payloads lost")
    print("  " + _max_line("new processes (a new pid each event)", newproc))
    print("  side by side, events/s before the index build: fixed {:,.0f}, details {:,.0f} ({:.2f}x), new processes {:,.0f} ({:.2f}x)".format(
        iso_fast["ingest_rate"], details["ingest_rate"], details["ingest_rate"] / iso_fast["ingest_rate"],
        newproc["ingest_rate"], newproc["ingest_rate"] / iso_fast["ingest_rate"]))
    print("end to end: stand-in CUDA workload -> uprobes (~1.7 us a call on the workload's CPU) -> ring -> SQLite")
    print("  " + _max_line("max (2 workload threads)", e2e_fast))
    print("  " + _fixed_line(f"fixed {RATE:,} calls/s for 2 s", e2e_fixed))
    paths = [
        {"bench": "ingest_details_max_before_index_build", "value": round(details["ingest_rate"]), "unit": "events/s",
         "target": DETAIL_TARGET, "baseline": round(iso_fast["ingest_rate"]), "ratio": round(details["ingest_rate"] / DETAIL_TARGET, 3)},
        {"bench": "ingest_new_processes_max_before_index_build", "value": round(newproc["ingest_rate"]), "unit": "events/s",
         "target": None, "baseline": round(iso_fast["ingest_rate"]), "ratio": round(newproc["ingest_rate"] / iso_fast["ingest_rate"], 3)},
    ]
    print(json.dumps(_entries("ingest", iso_fast, iso_fixed) + paths + _entries("ingest_e2e_uprobes", e2e_fast, e2e_fixed)))


if __name__ == "__main__":
    main()
