"""The `kernel_names` table: which kernel a launch's handle (events.arg0) stands for.

Written while tracing (probes/kernels.py); read by stats, explain, the MCP
tools and the exports. Handles the trace did not name, and every handle of an
Ingero database, show as hex: a name is never guessed.
"""

from __future__ import annotations

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


__all__ = ["KERNEL_LAUNCH", "hex_handle", "kernel_names"]
