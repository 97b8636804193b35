"""tracefs, where tracepoint ids live: a fresh host may not have it mounted."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

TRACEFS = Path("/sys/kernel/tracing")
DEBUG_TRACING = Path("/sys/kernel/debug/tracing")


def tracefs_mounted() -> bool:
    return (TRACEFS / "events").is_dir()


def ensure_tracefs() -> str:
    """Mount tracefs if needed (libbpf reads tracepoint ids from it); return its path.

    Raises OSError saying how to mount it by hand when mounting is not allowed."""
    if tracefs_mounted():
        return str(TRACEFS)
    if (DEBUG_TRACING / "events").is_dir():
        return str(DEBUG_TRACING)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"nodev", str(TRACEFS).encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot mount tracefs at {TRACEFS} ({os.strerror(err)}): mount -t tracefs nodev {TRACEFS}")
    return str(TRACEFS)
