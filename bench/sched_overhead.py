"""Cost of the sched family on a context-switch-heavy workload, side by side in one run.

Two threads of one child process ping-pong a byte over pipes, both pinned to
CPU 0, so every round trip is two context switches. Timed in three phases,
interleaved: no BPF loaded (baseline), the sched object attached but the
workload not traced (what every other process on the host pays), and the
workload traced (one off-CPU record per switch). Median of the reps per phase.
Target: the untraced path costs < 2 %.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap

from whyprobe.kernel.loader import ProbeSet
from whyprobe.kernel.ring import RingReader
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.host import SchedFamily
from whyprobe.record.events import EVENT_DTYPE

ROUND_TRIPS = 20_000
REPS = 7

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


def main() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    base, loaded, traced = [], [], []
    records = 0
    _run(child)  # warm up
    for _ in range(REPS):
        base.append(_run(child))
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
    b, l, t = statistics.median(base), statistics.median(loaded), statistics.median(traced)
    print(f"{ROUND_TRIPS} pipe round trips (2 context switches each) x {REPS} reps, CPU 0, Python threads")
    print(f"  no BPF             : {b / 1e3:8.2f} us per round trip")
    print(f"  sched, untraced    : {l / 1e3:8.2f} us  ({(l / b - 1) * 100:+.2f} %)")
    print(f"  sched, traced      : {t / 1e3:8.2f} us  ({(t / b - 1) * 100:+.2f} %), {records} off-CPU records")
    print(json.dumps({"bench": "sched_overhead", "value": l / b, "unit": "ratio (untraced with sched attached / no BPF)",
                      "target": 1.02, "baseline": b, "ratio": l / b, "traced_ratio": t / b}))


if __name__ == "__main__":
    main()
