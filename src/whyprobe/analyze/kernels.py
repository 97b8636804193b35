"""Kernel names of launches: the `kernel_names` table (written while tracing) as labels.

A launch's arg0 is a host stub pointer (runtime) or a CUfunction/CUkernel
(driver); `kernel_names` maps (pid, handle) to the demangled name. Handles no
trace named (Ingero databases, JIT code without a driver lookup in the trace)
are shown as hex, never guessed.
"""

from __future__ import annotations

import numpy as np

from whyprobe.demangle import demangle
from whyprobe.events import Source
from whyprobe.store.reader import TraceDB

_C, _D = int(Source.CUDA), int(Source.DRIVER)
# Launches of one kernel function: cudaLaunchKernel(ExC), cuLaunchKernel(Ex); not graph launches.
KERNEL_LAUNCH = frozenset({(_C, 3), (_C, 13), (_D, 1), (_D, 7)})


def kernel_names(db: TraceDB) -> dict[tuple[int, int], str]:
    """(pid, handle as stored in events.arg0) -> demangled kernel name."""
    if not db.has("kernel_names"):
        return {}
    return {(int(p), int(h)): demangle(str(n)) for p, h, n in db.conn.execute("SELECT pid, handle, name FROM kernel_names")}


def hex_handle(handle: int) -> str:
    return f"{handle & 0xFFFFFFFFFFFFFFFF:#x}"


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


__all__ = ["KERNEL_LAUNCH", "hex_handle", "kernel_labels", "kernel_names", "split_by_kernel"]
