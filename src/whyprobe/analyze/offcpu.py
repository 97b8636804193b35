"""Off-CPU intervals of traced threads, read from sched_switch rows.

Our rows say who took the CPU (arg1, when the thread was preempted) and how
long that thread then ran (aux, 0 = unknown), on which CPU (arg2), who woke
a blocked thread (aux = waker tid, ret_code = waker pid) and whether it was
still runnable (flags & F_PREEMPTED). Ingero rows carry only the interval
(arg1 repeats the thread's own tid, arg0/flags are empty): there the state,
preemptor and waker are unknown, and `degraded` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from whyprobe.events import F_PREEMPTED, Source, op_by_name

SCHED_SWITCH = (int(Source.HOST), op_by_name("sched_switch").op)

# state values
BLOCKED, PREEMPTED, UNKNOWN_STATE = 0, 1, 2


@dataclass(frozen=True)
class OffCpu:
    """Off-CPU intervals sorted by (tid, start); -1 marks an unknown tid/pid/cpu."""

    tid: np.ndarray
    pid: np.ndarray
    start: np.ndarray
    end: np.ndarray
    state: np.ndarray
    preemptor: np.ndarray
    preemptor_ran: np.ndarray  # ns the preemptor ran during the interval, -1 unknown
    waker_tid: np.ndarray
    waker_pid: np.ndarray
    cpu: np.ndarray
    degraded: bool

    def __len__(self) -> int:
        return len(self.tid)

    def coverage(self) -> dict[int, tuple[int, int]]:
        """Per tid, the span [first switch-out, last switch-in] its scheduling was traced over."""
        if not len(self):
            return {}
        bounds = np.flatnonzero(np.diff(self.tid)) + 1
        firsts = np.concatenate(([0], bounds))
        lasts = np.append(bounds, len(self.tid))
        return {
            int(self.tid[a]): (int(self.start[a]), int(self.end[a:b].max()))
            for a, b in zip(firsts.tolist(), lasts.tolist())
        }

    def pid_by_tid(self) -> dict[int, int]:
        """tid → pid of its last interval (rows are sorted by tid)."""
        if not len(self):
            return {}
        lasts = np.append(np.flatnonzero(np.diff(self.tid)), len(self.tid) - 1)
        return dict(zip(self.tid[lasts].tolist(), self.pid[lasts].tolist()))

    def total_by_tid(self) -> dict[int, int]:
        tids, inv = np.unique(self.tid, return_inverse=True)
        sums = np.bincount(inv, weights=(self.end - self.start).astype(np.float64), minlength=len(tids))
        return {int(t): int(round(s)) for t, s in zip(tids, sums)}


def off_cpu_intervals(events: np.ndarray, *, degraded: bool) -> OffCpu:
    """The sched_switch rows of `events` (an EVENT_ROW_DTYPE array) as intervals."""
    rows = events[(events["source"] == SCHED_SWITCH[0]) & (events["op"] == SCHED_SWITCH[1]) & (events["duration"] > 0)]
    rows = rows[np.lexsort((rows["timestamp"], rows["tid"]))]
    n = len(rows)
    unknown = np.full(n, -1, np.int64)
    if degraded:
        state = np.full(n, UNKNOWN_STATE, np.int64)
        preemptor, ran, waker_tid, waker_pid, cpu = unknown, unknown, unknown, unknown, rows["cpu"].copy()
    else:
        preempted = (rows["flags"] & F_PREEMPTED) != 0
        state = np.where(preempted, PREEMPTED, BLOCKED).astype(np.int64)
        preemptor = np.where(preempted & (rows["arg1"] > 0) & (rows["arg1"] != rows["tid"]), rows["arg1"], -1)
        # Traces recorded before aux carried it (and synthetic ones) have 0 here.
        ran = np.where((preemptor > 0) & (rows["aux"] > 0), np.minimum(rows["aux"], rows["duration"]), -1)
        waker_tid = np.where(~preempted & (rows["aux"] > 0), rows["aux"], -1)
        waker_pid = np.where(waker_tid > 0, np.where(rows["ret_code"] > 0, rows["ret_code"], -1), -1)
        cpu = rows["arg2"].copy()
    return OffCpu(
        tid=rows["tid"].copy(),
        pid=rows["pid"].copy(),
        start=rows["timestamp"].copy(),
        end=rows["timestamp"] + rows["duration"],
        state=state,
        preemptor=preemptor,
        preemptor_ran=np.asarray(ran, np.int64),
        waker_tid=waker_tid,
        waker_pid=waker_pid,
        cpu=cpu,
        degraded=degraded,
    )
