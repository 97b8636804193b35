"""CUDA call classes by (source, op) id — ids, not names, since Ingero names some ops differently."""

from __future__ import annotations

import numpy as np

from whyprobe.events import Source

_C, _D = int(Source.CUDA), int(Source.DRIVER)

GPU_SOURCES = (_C, _D)
LAUNCH = frozenset({(_C, 3), (_C, 13), (_C, 14), (_D, 1), (_D, 7), (_D, 8)})
# Calls that queue GPU work and return before it runs.
ASYNC_WORK = LAUNCH | {(_C, 7), (_C, 9), (_C, 12), (_C, 16), (_C, 18), (_C, 20), (_D, 3), (_D, 9)}
SYNC = frozenset({(_C, 5), (_C, 6), (_C, 21), (_D, 4), (_D, 11), (_D, 12)})
STREAM_SYNC = frozenset({(_C, 5), (_D, 11)})
# Calls that synchronize implicitly (cudaFree, synchronous copies and memsets).
IMPLICIT_SYNC = frozenset({(_C, 2), (_C, 4), (_C, 15), (_C, 17), (_C, 19), (_D, 2), (_D, 10)})
ALLOC = frozenset({(_C, 1), (_C, 8), (_C, 9), (_C, 10), (_C, 11), (_D, 5), (_D, 6), (_D, 9), (_D, 14)})
MEMCPY = frozenset({(_C, 4), (_C, 7), (_C, 15), (_C, 16), (_C, 17), (_C, 18), (_D, 2), (_D, 3)})


def member(rows: np.ndarray, ops: frozenset[tuple[int, int]]) -> np.ndarray:
    """Boolean mask of the EVENT_ROW_DTYPE rows whose (source, op) is in `ops`."""
    keys = np.array([s * 65536 + o for s, o in ops], np.int64)
    return np.isin(rows["source"].astype(np.int64) * 65536 + rows["op"], keys)


def is_gpu_call(rows: np.ndarray) -> np.ndarray:
    return np.isin(rows["source"], GPU_SOURCES)
