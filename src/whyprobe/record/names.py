"""Names of the threads and processes a trace saw: `thread_names` and `process_names` rows.

A thread is named from its first record (the kernel puts its comm in the
first record per thread and program), a process from the kernel's records
(the proc family's for what forked or exec'd); /proc only fills in the
command line of those still alive, later, off the reader thread, a bounded
number per tick. An exec makes the names stale: the follower reports it with
the new program's comm, file name, argv and parent (record/follow.py) and the
rows are replaced, so a python started through a bash shim is `python`
everywhere, not `bash`.
"""

from __future__ import annotations

import collections
import os
import shlex
import time
from typing import Sequence

import numpy as np

from whyprobe.record.follow import Exec
from whyprobe.store.writer import Writer

PROCESS_COLUMNS = ("pid", "name", "seen_at", "ppid", "cmdline", "exe", "started_at")
# Processes read from /proc per tick (their names come from the records; this adds command lines).
PROC_READS_PER_TICK = 64


class Namer:
    """names() and flush_execs() run on the reader thread, read_process_facts() on the caller's,
    exec_seen() on the follower's. Rows already written are kept (INSERT OR IGNORE) except by an
    exec, which replaces them, and by /proc facts of a live process."""

    def __init__(self, writer: Writer, families: Sequence = ()) -> None:
        self.writer = writer
        self.families = list(families)
        self.seen_tids: set[int] = set()
        self.seen_pids: set[int] = set()
        self._unread_pids: collections.deque[tuple[int, str, int]] = collections.deque()  # (pid, comm, seen_at)
        # (pid, tid, comm, process row) of execs, appended by the follower, written by the reader.
        self._execs: collections.deque = collections.deque()
        # pid -> its program's name after its latest exec, for the /proc facts read later.
        self._exec_names: dict[int, str] = {}

    def exec_seen(self, ex: Exec) -> None:
        """A traced process runs a new program (the kernel's exec notice): its names will be replaced.

        Everything comes from the notice rather than from /proc or the next
        record: a short-lived program is gone before either could be read.
        """
        row = (ex.pid, ex.comm, time.time_ns(), ex.ppid, shlex.join(ex.argv), ex.path, ex.started_at)
        self._execs.append((ex.pid, ex.tid, ex.comm, row))

    def flush_execs(self) -> None:
        """Write the names of programs exec'd since the last call, replacing older ones (one item each table)."""
        if not self._execs:
            return
        execs = [self._execs.popleft() for _ in range(len(self._execs))]
        now = time.time_ns()
        for pid, tid, comm, _ in execs:
            self.seen_tids.add(tid)
            self.seen_pids.add(pid)
            self._exec_names[pid] = comm
        self.writer.put_rows("thread_names", ("tid", "pid", "comm", "seen_at"), [(tid, pid, comm, now) for pid, tid, comm, _ in execs], replace=True)
        self.writer.put_rows("process_names", PROCESS_COLUMNS, [row for *_, row in execs], replace=True)

    def names(self, records: np.ndarray) -> None:
        """Name every thread and process seen for the first time (after the execs heard of so far)."""
        self.flush_execs()
        tids, first = np.unique(records["tid"], return_index=True)
        new = [i for t, i in zip(tids.tolist(), first.tolist()) if t not in self.seen_tids]
        if not new:
            return
        now = time.time_ns()
        threads, procs = [], []
        described = next((f.processes for f in self.families if f.name == "proc" and hasattr(f, "processes")), {})
        for i in new:
            tid, pid = int(records["tid"][i]), int(records["pid"][i])
            comm = records["comm"][i].split(b"\0")[0].decode(errors="replace") or _thread_comm(pid, tid)
            self.seen_tids.add(tid)
            threads.append((tid, pid, comm, now))
            if pid not in self.seen_pids:
                self.seen_pids.add(pid)
                known = described.get(pid)
                # Named from the kernel's records (the proc family's for what forked or exec'd); /proc
                # only fills in the command line of those still alive, later, off this thread (tick).
                if known is None:
                    procs.append((pid, comm, now, 0, "", "", 0))
                    self._unread_pids.append((pid, comm, now))
                else:
                    procs.append((pid, known["name"] or comm, now, known["ppid"], known["cmdline"], known["exe"], known["started_at"]))
        self.writer.put_rows("thread_names", ("tid", "pid", "comm", "seen_at"), threads)
        if procs:
            self.writer.put_rows("process_names", PROCESS_COLUMNS, procs)

    def read_process_facts(self) -> None:
        """Command line, exe, parent and start of processes first seen since the last tick, from /proc,
        a bounded number per tick: a storm of short-lived processes costs a few failed opens, not one per pid."""
        rows = []
        for _ in range(min(len(self._unread_pids), PROC_READS_PER_TICK)):
            pid, comm, seen = self._unread_pids.popleft()
            row = _process_row(pid, self._exec_names.get(pid, comm), seen)
            if row[4] or row[5]:
                rows.append(row)
        if rows:
            self.writer.put_rows("process_names", PROCESS_COLUMNS, rows, replace=True)


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
