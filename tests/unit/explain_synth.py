"""Synthetic whyprobe databases for the explain tests (real schema, real inserts)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from whyprobe.events import F_PREEMPTED, Source
from whyprobe.store import schema

T0 = 1_774_000_000_000_000_000
MS, US = 1_000_000, 1_000
COLS = ("timestamp", "pid", "tid", "source", "op", "duration", "arg0", "arg1", "arg2", "aux", "ret_code", "cpu", "flags")
ENGINE_PID, ENGINE_TID, HOG_PID, HOG_TID = 100, 101, 200, 201
THREADS = {ENGINE_TID: (ENGINE_PID, "engine"), HOG_TID: (HOG_PID, "hog"), ENGINE_PID: (ENGINE_PID, "server")}


def ev(ts: int, dur: int, *, source: int = int(Source.CUDA), op: int = 3, pid: int = ENGINE_PID, tid: int = ENGINE_TID, **kw: int) -> dict:
    row = dict.fromkeys(COLS, 0)
    row.update(timestamp=ts, duration=dur, source=source, op=op, pid=pid, tid=tid, cpu=-1)
    row.update(kw)
    return row


def preempted(ts: int, dur: int, by: int = HOG_TID, cpu: int = 3, tid: int = ENGINE_TID) -> dict:
    return ev(ts, dur, source=int(Source.HOST), op=1, tid=tid, arg1=by, arg2=cpu, flags=F_PREEMPTED)


def blocked(ts: int, dur: int, waker: int = 0, waker_pid: int = 0, tid: int = ENGINE_TID) -> dict:
    return ev(ts, dur, source=int(Source.HOST), op=1, tid=tid, arg0=1, aux=waker, ret_code=waker_pid, arg2=0)


def write_db(path: Path, events: list[dict], threads: dict[int, tuple[int, str]] = THREADS) -> Path:
    conn = sqlite3.connect(path)
    schema.create(conn)
    with conn:
        conn.executemany(f"INSERT INTO events({', '.join(COLS)}) VALUES ({', '.join('?' * len(COLS))})", [tuple(e[c] for c in COLS) for e in events])
        conn.executemany("INSERT INTO thread_names(tid, pid, comm) VALUES (?, ?, ?)", [(t, p, c) for t, (p, c) in threads.items()])
        conn.executemany("INSERT OR REPLACE INTO process_names(pid, name) VALUES (?, ?)", [(p, c) for t, (p, c) in threads.items() if t == p])
    conn.close()
    return path


def launch_loop(n: int, *, dur: int = 50 * US, idle: int = 950 * US, slow: dict[int, int] | None = None, start: int = T0) -> tuple[list[dict], list[tuple[int, int]]]:
    """n sequential cudaLaunchKernel calls on the engine thread; slow maps call index → duration.
    Returns the events and the (start, end) of each slow call."""
    slow = slow or {}
    out, spans, ts = [], [], start
    for i in range(n):
        d = slow.get(i, dur)
        out.append(ev(ts, d, arg0=0x7F00 + (i % 4), arg2=7))
        if i in slow:
            spans.append((ts, ts + d))
        ts += d + idle
    return out, spans


def hog_scenario() -> list[dict]:
    """(a) 10 of 200 launches preempted for 8.5 ms by `hog` on CPU 3."""
    slow = {i: 9 * MS for i in range(15, 200, 19)}
    calls, spans = launch_loop(200, slow=slow)
    waits = [blocked(calls[i]["timestamp"] + 60 * US, 500 * US) for i in range(0, 200, 7) if i not in slow]
    return calls + [preempted(s + 200 * US, 8_500 * US) for s, _ in spans] + waits
