"""Cost of the sched family on a context-switch-heavy workload, side by side in one run.

Two threads of one child process ping-pong a byte over pipes, both pinned to
CPU 0, so every round trip is two context switches and two wake-ups. Each rep
times four phases back to back: no BPF (baseline), empty sched_switch and
sched_waking programs attached (the floor: what attaching anything costs), the
sched object attached but the workload not traced (what every other process
on the host pays), and the workload traced (one off-CPU record per switch).
Ratios are taken within a rep, against that rep's baseline, and the median
over reps is reported, so load that drifts between reps cancels out.
Target: the untraced path costs < 2 %.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap

from whyprobe.kernel.bpfobject import BpfObject
from whyprobe.kernel.loader import ProbeSet, bpf_object_path
from whyprobe.kernel.ring import RingReader
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.host import SchedFamily
from whyprobe.events import EVENT_DTYPE

ROUND_TRIPS = 20_000
REPS = 9

CHILD = textwrap.dedent(
    f"""
    import os, sys, threading, time
    os.sched_setaffinity(0, {{0}})
    a_r, a_w = os.pipe(); b_r, b_w = os.pipe()
    def echo():
        while os.read(a_r, 1) == b"x":
            os.write(b_w, b"x")
    threading.Thread(target=echo, daemon=True).start()
    for line in sys.stdin:
        t0 = time.perf_counter_ns()
        for _ in range({ROUND_TRIPS}):
            os.write(a_w, b"x"); os.read(b_r, 1)
        print(time.perf_counter_ns() - t0, flush=True)
    """
)


def _run(child: subprocess.Popen) -> float:
    child.stdin.write("go\n")
    child.stdin.flush()
    return int(child.stdout.readline()) / ROUND_TRIPS


def _bare(child: subprocess.Popen) -> float:
    with BpfObject(bpf_object_path("bench_bare")) as obj:
        for p in obj.program_names():
            obj.set_autoload(p, p in ("handle_bare_switch", "handle_bare_waking"))
        obj.load()
        obj.attach("handle_bare_switch")
        obj.attach("handle_bare_waking")
        return _run(child)


def main() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    base, bare, loaded, traced = [], [], [], []
    records = 0
    _run(child)  # warm up
    for _ in range(REPS):
        base.append(_run(child))
        bare.append(_bare(child))
        with ProbeSet() as ps:
            SchedFamily().attach(ps, TargetSpec(pids=[]))
            ring = RingReader(ps.events_fd, EVENT_DTYPE)
            loaded.append(_run(child))
            ps.add_targets([child.pid])
            traced.append(_run(child))
            records += len(ring.poll(0))
            ring.close()
    child.stdin.close()
    child.wait()

    def ratio(xs: list[float]) -> float:
        return statistics.median(x / b for x, b in zip(xs, base))

    b = statistics.median(base)
    print(f"{ROUND_TRIPS} pipe round trips (2 context switches each) x {REPS} reps, CPU 0, Python threads")
    print(f"  no BPF             : {b / 1e3:8.2f} us per round trip (median)")
    for label, xs in (("empty programs", bare), ("sched, untraced", loaded), ("sched, traced", traced)):
        print(f"  {label:<19}: {statistics.median(xs) / 1e3:8.2f} us  ({(ratio(xs) - 1) * 100:+.2f} % median of per-rep ratios)")
    print(f"  {records} off-CPU records while traced")
    print(json.dumps({"bench": "sched_overhead", "value": ratio(loaded), "unit": "ratio (untraced with sched attached / no BPF)",
                      "target": 1.02, "baseline": b, "ratio": ratio(loaded), "traced_ratio": ratio(traced), "empty_ratio": ratio(bare)}))


if __name__ == "__main__":
    main()
