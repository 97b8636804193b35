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


__all__ = ["KERNEL_LAUNCH", "hex_handle", "kernel_labels", "kernel_names"]
