"""Host load while tracing: CPU %, memory, swap and load average once a second into `system_snapshots`.

A daemon thread the trace session starts next to the reader; psutil's
cpu_percent(None) measures since its previous call, so each row covers the
second before it.
"""

from __future__ import annotations

import os
import threading
import time

import psutil

COLUMNS = ("timestamp", "cpu_pct", "mem_pct", "mem_avail", "swap_mb", "load_avg")


def sample() -> tuple[int, float, float, int, int, float]:
    """One system_snapshots row for now."""
    mem = psutil.virtual_memory()
    return (
        time.time_ns(),
        float(psutil.cpu_percent(None)),
        float(mem.percent),
        int(mem.available),
        int(psutil.swap_memory().used // 2**20),
        float(os.getloadavg()[0]),
    )


class SnapshotThread:
    """Writes one row per `interval_s` through `writer.put_rows` until stop()."""

    def __init__(self, writer: object, interval_s: float = 1.0) -> None:
        self.writer = writer
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="whyprobe-snapshots", daemon=True)

    def start(self) -> "SnapshotThread":
        psutil.cpu_percent(None)  # the first call only sets the baseline
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.writer.put_rows("system_snapshots", COLUMNS, [sample()])

    def stop(self) -> None:
        """Stop and write a last row, so even a trace shorter than the interval has one."""
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self.writer.put_rows("system_snapshots", COLUMNS, [sample()])
