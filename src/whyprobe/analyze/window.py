"""What happened around a moment: events overlapping a time window, off-CPU intervals, names.

The questions `get_timeline`, `query_off_cpu_events` and `resolve_causal_chain` ask of
the events table, answered with SQL that stays on its indexes (a window is a few
thousand rows of a trace of millions). Names come from thread_names/process_names.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from whyprobe.analyze.offcpu import SCHED_SWITCH
from whyprobe.events import F_PREEMPTED, Source
from whyprobe.store.reader import TraceDB

GPU_CALL_SOURCES = (int(Source.CUDA), int(Source.DRIVER))


def comm_sql(db: TraceDB, tid_expr: str, pid_expr: str) -> str:
    """SQL for the name of a thread (else its process), '' when the trace has neither table."""
    parts = []
    if db.has("thread_names"):
        parts.append(f"(SELECT comm FROM thread_names WHERE tid = {tid_expr})")
    if db.has("process_names"):
        parts.append(f"(SELECT name FROM process_names WHERE pid = {pid_expr})")
    return f"COALESCE({', '.join(parts)}, '')" if parts else "''"


def _col(db: TraceDB, name: str, default: str = "0") -> str:
    return name if db.has("events", name) else default


def _has_duration_index(db: TraceDB) -> bool:
    """Whether events has our (source, op, duration) index (Ingero files do not)."""
    try:
        cols = [r[2] for r in db.conn.execute("PRAGMA index_info('idx_events_source_op')")]
    except sqlite3.Error:
        return False
    return cols == ["source", "op", "duration"]


def _max_duration_by_seeks(db: TraceDB) -> int:
    """MAX(duration) over all events in O(pairs · log n): walk the distinct (source, op) pairs of
    the (source, op, duration) index by seeks and take each pair's last entry. Our schema keeps
    source and op NOT NULL, so the pairs cover every row."""
    q = db.conn.execute
    best, row = None, q("SELECT source, op FROM events ORDER BY source, op LIMIT 1").fetchone()
    while row is not None:
        source, op = row
        m = q("SELECT MAX(duration) FROM events WHERE source = ? AND op = ?", (source, op)).fetchone()[0]
        if m is not None and (best is None or m > best):
            best = m
        row = q("SELECT source, op FROM events WHERE source = ? AND op > ? ORDER BY op LIMIT 1", (source, op)).fetchone() or q(
            "SELECT source, op FROM events WHERE source > ? ORDER BY source, op LIMIT 1", (source,)
        ).fetchone()
    return int(best or 0)


def max_duration(db: TraceDB) -> int:
    """The longest event's duration: how far before a window an overlapping event can start."""
    if db.flavor == "whyprobe" and _has_duration_index(db):
        return _max_duration_by_seeks(db)
    return int(db.conn.execute("SELECT COALESCE(MAX(m), 0) FROM (SELECT MAX(duration) AS m FROM events GROUP BY source, op)").fetchone()[0])


def overlapping(
    db: TraceDB, start: int, end: int, longest: int, *, pid: int | None = None, tid: int | None = None,
    not_tid: int | None = None, not_id: int | None = None, limit: int = 100,
) -> tuple[list[dict], int]:
    """Events whose [timestamp, timestamp+duration) overlaps [start, end), longest first, and how
    many there are. `longest` is max_duration(db) (callers cache it)."""
    extra, params = "", []
    # +e.pid: with a pid alone, the timestamp index beats the pid index over a window.
    for expr, val in (("+e.pid = ?", pid), ("e.tid = ?", tid), ("e.tid != ?", not_tid), ("e.id != ?", not_id)):
        if val is not None:
            extra += f" AND {expr}"
            params.append(val)
    where = f"e.timestamp >= ? AND e.timestamp < ? AND e.timestamp + e.duration > ?{extra}"
    args = (start - longest, end, start, *params)
    total = db.conn.execute(f"SELECT COUNT(*) FROM events e WHERE {where}", args).fetchone()[0]
    names, sources = db.op_names(), db.source_names()
    rows = db.conn.execute(
        f"SELECT e.id, e.timestamp, e.duration, e.pid, e.tid, e.source, e.op, {comm_sql(db, 'e.tid', 'e.pid')}, "
        f"e.arg0, e.arg1, {_col(db, 'aux')}, e.ret_code FROM events e WHERE {where} ORDER BY e.duration DESC LIMIT ?",
        (*args, limit),
    ).fetchall()
    out = [
        {
            "id": r[0], "timestamp_ns": r[1], "duration_ns": r[2], "pid": r[3], "tid": r[4],
            "source": sources.get(r[5], str(r[5])), "op": names.get((r[5], r[6]), f"{r[5]}:{r[6]}"),
            "comm": r[7], "arg0": r[8], "arg1": r[9], "aux": r[10], "ret_code": r[11],
            "overlap_ns": max(0, min(end, r[1] + r[2]) - max(start, r[1])),
        }
        for r in rows
    ]
    return out, total


def longest_gpu_call(db: TraceDB) -> tuple[int | str, int] | None:
    """(id, middle ns) of the longest CUDA runtime/driver call, else of the longest event; None
    when the trace is empty: where a look at a trace with no other lead starts. The id is as
    stored (merged Ingero traces keep TEXT ids such as 'gpu-node-03:425')."""
    marks = ", ".join("?" * len(GPU_CALL_SOURCES))
    row = db.conn.execute(
        f"SELECT id, timestamp + duration / 2 FROM events WHERE source IN ({marks}) ORDER BY duration DESC LIMIT 1", GPU_CALL_SOURCES
    ).fetchone() or db.conn.execute("SELECT id, timestamp + duration / 2 FROM events ORDER BY duration DESC LIMIT 1").fetchone()
    return (row[0], int(row[1])) if row else None


def event_span(db: TraceDB, event_id: int) -> tuple[int, int, int, int, int, int] | None:
    """(timestamp, duration, pid, tid, source, op) of one event, None when there is no such id."""
    row = db.conn.execute("SELECT timestamp, duration, pid, tid, source, op FROM events WHERE id = ?", (event_id,)).fetchone()
    return tuple(int(v) for v in row) if row else None  # type: ignore[return-value]


def off_cpu_intervals(
    db: TraceDB, *, pid: int | None, tid: int | None, since_ns: int | None, until_ns: int | None, min_duration_ns: int, limit: int,
) -> dict[str, Any]:
    """The longest off-CPU intervals (sched_switch rows) matching the filters, with who took the
    CPU (preempted) or who woke the thread (blocked), and the count and sum of all that match."""
    conds = ["e.source = ? AND e.op = ?", "e.duration >= ?"]
    params: list[Any] = [*SCHED_SWITCH, min_duration_ns]
    for col, val, op in (("e.pid", pid, "="), ("e.tid", tid, "="), ("e.timestamp", since_ns, ">="), ("e.timestamp", until_ns, "<")):
        if val is not None:
            conds.append(f"{col} {op} ?")
            params.append(val)
    if len(conds) > 2:
        # Without ANALYZE statistics SQLite would walk the (source, op, duration) index to skip the
        # sort, scanning every sched_switch; with a thread/pid/time filter the other indexes win.
        conds[0] = "+e.source = ? AND +e.op = ?"
    where = " AND ".join(conds)
    count, total_ns = db.conn.execute(f"SELECT COUNT(*), COALESCE(SUM(e.duration), 0) FROM events e WHERE {where}", params).fetchone()
    preempted = f"({_col(db, 'flags')} & {F_PREEMPTED}) != 0"
    # On preempted rows aux is the preemptor's run time, not a waker.
    waker = f"(CASE WHEN {preempted} THEN 0 ELSE e.aux END)" if db.has("events", "aux") else "0"
    sql = (
        f"SELECT e.id, e.timestamp, e.pid, e.tid, {comm_sql(db, 'e.tid', 'e.pid')}, e.duration, e.arg0, "
        f"{preempted}, e.arg1, {comm_sql(db, 'e.arg1', '-1')}, {waker}, e.ret_code, "
        f"{comm_sql(db, waker, 'e.ret_code')}, {_col(db, 'cpu', '-1')} "
        f"FROM events e WHERE {where} ORDER BY e.duration DESC LIMIT ?"
    )
    keys = ("id", "timestamp_ns", "pid", "tid", "comm", "off_cpu_ns", "prev_state", "preempted", "preemptor_tid", "preemptor_comm",
            "waker_tid", "waker_pid", "waker_comm", "cpu")
    events = [dict(zip(keys, r)) for r in db.conn.execute(sql, [*params, limit]).fetchall()]
    for ev in events:
        ev["preempted"] = bool(ev["preempted"])
    return {"total": count, "total_off_cpu_ns": total_ns, "events": events, "omitted": count - len(events)}
