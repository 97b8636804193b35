"""Names of the threads and processes a trace saw: `thread_names` and `process_names` rows.

A thread is named from its first record (the kernel puts its comm in the
first record per thread and program), a process from /proc while it is
alive. An exec makes both stale: the follower reports it (record/follow.py)
and the process is named again from its first record after the exec, so a
python started through a bash shim is `python` everywhere, not `bash`.
"""

from __future__ import annotations

import os
import shlex
import time

import numpy as np

from whyprobe.store.writer import Writer


class Namer:
    """Runs on the reader thread; exec_seen() may be called from any thread."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.seen_tids: set[int] = set()
        self.seen_pids: set[int] = set()
        # pid -> kernel ns of its latest exec, until a record after it names the pid again.
        self.execs: dict[int, int] = {}

    def exec_seen(self, pid: int, ts_ns: int) -> None:
        self.execs[pid] = ts_ns

    def names(self, records: np.ndarray) -> None:
        """Name every thread and process seen for the first time (or the first time since its exec)."""
        if self.execs:
            self._rename_execed(records)
        tids, first = np.unique(records["tid"], return_index=True)
        new = [i for t, i in zip(tids.tolist(), first.tolist()) if t not in self.seen_tids]
        if new:
            self._write_names(records, new, replace=False)

    def _rename_execed(self, records: np.ndarray) -> None:
        """A process that exec'd is named again from its first record after the exec (names, cmdline, exe)."""
        execs = dict(self.execs)
        after = np.isin(records["pid"], list(execs))
        if not after.any():
            return
        exec_ts = np.array([execs.get(p, 0) for p in records["pid"][after].tolist()], np.uint64)
        idx = np.flatnonzero(after)[records["ts_ns"][after] >= exec_ts]
        renamed: dict[int, int] = {}
        for i in idx.tolist():
            renamed.setdefault(int(records["tid"][i]), i)
        for i in renamed.values():
            pid = int(records["pid"][i])
            self.seen_pids.discard(pid)
            if self.execs.get(pid) == execs[pid]:
                del self.execs[pid]
        if renamed:
            self._write_names(records, list(renamed.values()), replace=True)

    def _write_names(self, records: np.ndarray, rows: list[int], *, replace: bool) -> None:
        now = time.time_ns()
        threads, procs = [], []
        for i in rows:
            tid, pid = int(records["tid"][i]), int(records["pid"][i])
            comm = records["comm"][i].split(b"\0")[0].decode(errors="replace") or _thread_comm(pid, tid)
            self.seen_tids.add(tid)
            threads.append((tid, pid, comm, now))
            if pid not in self.seen_pids:
                self.seen_pids.add(pid)
                procs.append(_process_row(pid, comm, now))
        self.writer.put_rows("thread_names", ("tid", "pid", "comm", "seen_at"), threads, replace=replace)
        if procs:
            self.writer.put_rows("process_names", ("pid", "name", "seen_at", "ppid", "cmdline", "exe", "started_at"), procs, replace=replace)


def _thread_comm(pid: int, tid: int) -> str:
    """A thread's name from /proc, for records that carry none (CUDA events name a thread in its first record only)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode(errors="replace")
    except OSError:  # gone: the name is unknown
        return ""


def _process_row(pid: int, comm: str, now: int) -> tuple:
    """(pid, name, seen_at, ppid, cmdline, exe, started_at) from /proc while the process is alive."""
    import psutil

    cmdline = exe = ""
    ppid = started = 0
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = shlex.join(a.decode(errors="replace") for a in f.read().rstrip(b"\0").split(b"\0"))
        exe = os.readlink(f"/proc/{pid}/exe")
        p = psutil.Process(pid)
        ppid, started = p.ppid(), int(p.create_time() * 1e9)
    except (OSError, psutil.Error):  # gone or unreadable: keep what we have
        pass
    return (pid, comm, now, ppid, cmdline, exe, started)
