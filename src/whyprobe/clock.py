"""The one clock conversion: BPF timestamps (CLOCK_MONOTONIC) to unix ns.

A trace measures the offset once, when it starts (`TraceSession.start`), stores
it in `sessions.clock_offset_ns` and applies that same value to every event,
message and process row, so stored timestamps can be converted back exactly.
"""

from __future__ import annotations

import time


def measure_offset_ns(samples: int = 7) -> int:
    """Wall clock minus CLOCK_MONOTONIC (what bpf_ktime_get_ns reads), in ns.

    The wall-clock read is bracketed by two monotonic reads; the tightest
    bracket of a few tries gives the offset with the least scheduling noise.
    """
    best_gap, best = None, 0
    for _ in range(samples):
        m0 = time.monotonic_ns()
        wall = time.time_ns()
        m1 = time.monotonic_ns()
        if best_gap is None or m1 - m0 < best_gap:
            best_gap, best = m1 - m0, wall - (m0 + m1) // 2
    return best
