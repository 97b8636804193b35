"""GPU-idle gaps: stretches where a thread that drives the GPU makes no CUDA calls.

A thread drives the GPU when it makes at least MIN_CALLS CUDA runtime/driver
calls. Its inter-call gaps run from the end of the work so far (nested driver
calls inside runtime calls included) to the next call's entry; a gap counts
when it is longer than MIN_GAP_NS and GAP_FACTOR times the thread's median
gap, so a steady launch loop has none and a loop that stops for a batch does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_CALLS = 8
MIN_GAP_NS = 50_000_000
GAP_FACTOR = 10


@dataclass(frozen=True)
class ThreadGaps:
    tid: int
    pid: int
    calls: int
    all_gaps: np.ndarray  # every inter-call gap (ns, >= 0), in time order
    start: np.ndarray  # the flagged gaps
    end: np.ndarray
    threshold_ns: int


def gap_threshold(all_gaps: np.ndarray) -> int:
    median = float(np.median(all_gaps)) if len(all_gaps) else 0.0
    return int(max(MIN_GAP_NS, GAP_FACTOR * median))


def thread_gaps(tid: int, pid: int, start: np.ndarray, end: np.ndarray) -> ThreadGaps | None:
    """The gaps of one thread's calls (any order), or None if it makes too few calls."""
    if len(start) < MIN_CALLS:
        return None
    order = np.lexsort((end, start))
    s, e = start[order], end[order]
    busy_until = np.maximum.accumulate(e)[:-1]
    gaps = np.maximum(s[1:] - busy_until, 0)
    threshold = gap_threshold(gaps)
    flagged = np.flatnonzero(gaps > threshold)
    return ThreadGaps(tid, pid, len(s), gaps, busy_until[flagged], s[1:][flagged], threshold)


def find_gaps(calls: np.ndarray) -> list[ThreadGaps]:
    """Per GPU-driving thread of `calls` (EVENT_ROW_DTYPE rows of CUDA/driver calls), its gaps."""
    out = []
    for tid in np.unique(calls["tid"]).tolist():
        rows = calls[calls["tid"] == tid]
        found = thread_gaps(int(tid), int(rows["pid"][0]), rows["timestamp"], rows["timestamp"] + rows["duration"])
        if found is not None:
            out.append(found)
    return out
