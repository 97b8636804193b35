"""Launches grouped by kernel: labels for stats --by kernel and the launch-latency tool.

A launch's arg0 is a host stub pointer (runtime) or a CUfunction/CUkernel
(driver); store/kernels.py maps (pid, handle) to the demangled name, hex when
the trace did not name it.
"""

from __future__ import annotations

import numpy as np

from whyprobe.store.kernels import hex_handle, kernel_names
from whyprobe.store.reader import TraceDB


def kernel_labels(db: TraceDB, pids: np.ndarray, handles: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(distinct labels, label index per row) for the launches given by pid and handle."""
    names = kernel_names(db)
    pairs, inverse = np.unique(np.stack([pids, handles], axis=1), axis=0, return_inverse=True)
    labels: list[str] = []
    index: dict[str, int] = {}
    pair_label = np.empty(len(pairs), np.int64)
    for i, (pid, handle) in enumerate(pairs.tolist()):
        text = names.get((pid, handle)) or hex_handle(handle)
        pair_label[i] = index.setdefault(text, len(labels))
        if pair_label[i] == len(labels):
            labels.append(text)
    return labels, pair_label[inverse.reshape(-1)]


def split_by_kernel(db: TraceDB, where: str, params: list, limit: int = 20) -> tuple[list[dict], int]:
    """Per kernel of the launches selected by `where`: count, p50/p99/max, total; (top by total time, kernels left out)."""
    rows = np.array(db.conn.execute(f"SELECT pid, COALESCE(arg0, 0), duration FROM events WHERE {where}", params).fetchall(), np.int64).reshape(-1, 3)
    if not len(rows):
        return [], 0
    labels, label_id = kernel_labels(db, rows[:, 0], rows[:, 1])
    out = []
    for i, name in enumerate(labels):
        d = rows[label_id == i, 2]
        p50, p99 = np.percentile(d, [50, 99])
        out.append({"kernel": name, "count": int(len(d)), "p50_ns": float(p50), "p99_ns": float(p99), "max_ns": int(d.max()), "total_ns": int(d.sum())})
    out.sort(key=lambda k: (-k["total_ns"], k["kernel"]))
    return out[:limit], max(0, len(out) - limit)


__all__ = ["kernel_labels", "split_by_kernel"]
