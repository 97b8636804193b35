"""The MCP tools' logic: thin, read-only wrappers over the engine and the safe SQL path.

Each `*_tool` function takes a `ServerState` plus the tool's arguments and returns
a `ToolResult`: a short trusted summary (numbers with units, written by us), the
structured data (plain JSON values, traced strings included) and a row count
for the audit log. `app.py` turns that into the MCP result, fencing the data.
Engine modules are imported inside each tool, so a missing one fails only it.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from mcp.server.mcpserver.exceptions import ToolError

from whyprobe import units
from whyprobe.errors import WhyprobeError
from whyprobe.server.security import SecuritySettings
from whyprobe.store import fastsql
from whyprobe.store.reader import TraceDB
from whyprobe.store.safesql import SafeConnection, SafeOptions, open_safe, run_query

SCHED_SWITCH = (3, 1)
LAUNCH_OPS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaGraphLaunch")
SEVERITIES = ("low", "medium", "high")


@dataclass
class ToolResult:
    summary: str
    data: dict[str, Any]
    rows: int = 0


def fmt_ns(ns: float | int | None) -> str:
    """A duration with a unit a reader can take in at a glance; "n/a" where a tool has none."""
    return "n/a" if ns is None else units.fmt_ns(ns)


def top_n(items: list[Any], n: int) -> tuple[list[Any], int]:
    """The first n items and how many were left out."""
    return items[:n], max(0, len(items) - n)


@dataclass
class ServerState:
    """What every tool call needs: the trace, the security settings, caches."""

    db_path: Path
    settings: SecuritySettings = field(default_factory=SecuritySettings)
    audit_path: Path | None = None
    fleet_nodes: list[str] = field(default_factory=list)
    _cache: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _computing: dict = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local)

    @property
    def options(self) -> SafeOptions:
        s = self.settings
        return SafeOptions(
            pid_filter=tuple(s.pid_filter),
            cgroup_filter=tuple(s.cgroup_filter),
            audit_path=self.audit_path,
            max_rows=s.max_rows,
            time_limit_ms=s.time_limit_ms,
            max_output_bytes=s.max_output_bytes,
        )

    def fingerprint(self) -> tuple:
        """Changes whenever the trace (or its WAL) changes, so caches never serve stale results."""
        out = []
        for p in (self.db_path, Path(f"{self.db_path}-wal")):
            try:
                st = p.stat()
            except OSError:
                out.append(None)
                continue
            # An empty WAL holds nothing: the first reader of a WAL-mode trace creates one,
            # which must not make every cached result stale.
            out.append((st.st_mtime_ns, st.st_size) if st.st_size or p == self.db_path else None)
        return tuple(out)

    def safe(self) -> SafeConnection:
        """This worker thread's read-only, filtered connection (reopened when the trace changes)."""
        fp = self.fingerprint()
        cached = getattr(self._local, "conn", None)
        if cached is not None and cached[0] == fp:
            return cached[1]
        if cached is not None:
            cached[1].close()
        safe = open_safe(self.db_path, self.options)
        self._local.conn = (fp, safe)
        return safe

    def trace(self) -> TraceDB:
        """A TraceDB over the filtered connection, for engine functions."""
        safe = self.safe()
        conn = safe.conn
        tables = frozenset(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table','view') UNION SELECT name FROM temp.sqlite_master WHERE type = 'view'"))
        columns = {t: frozenset(r[1] for r in conn.execute(f"PRAGMA table_info('{t}')")) for t in tables if t != "audit_log"}
        row = conn.execute("SELECT value FROM schema_info WHERE key = 'producer'").fetchone() if "schema_info" in tables else None
        flavor = "whyprobe" if row and row[0] == "whyprobe" else "ingero"
        return TraceDB(self.db_path, conn, flavor, tables, columns)

    def cached(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """Engine results keyed by arguments and the trace's fingerprint (the trace is read-only to us).

        One computation per key at a time: a call that arrives while the start-up warm-up
        (or another call) computes the same result waits for it instead of starting over."""
        full = (key, self.fingerprint())
        with self._lock:
            if full in self._cache:
                self._cache.move_to_end(full)
                return self._cache[full]
            busy = self._computing.setdefault(full, threading.Lock())
        with busy:
            with self._lock:
                if full in self._cache:
                    return self._cache[full]
            try:
                value = compute()
            except BaseException:
                with self._lock:
                    self._computing.pop(full, None)
                raise
            with self._lock:
                self._cache[full] = value
                self._computing.pop(full, None)
                while len(self._cache) > 256:
                    self._cache.popitem(last=False)
        return value


def _engine(module: str, name: str) -> Callable[..., Any]:
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ToolError(f"{module}.{name} is not available in this whyprobe build") from None


def _wrap_engine(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except WhyprobeError as exc:
        raise ToolError(str(exc)) from None


def _comm_sql(db: TraceDB, tid_expr: str, pid_expr: str) -> str:
    parts = []
    if db.has("thread_names"):
        parts.append(f"(SELECT comm FROM thread_names WHERE tid = {tid_expr})")
    if db.has("process_names"):
        parts.append(f"(SELECT name FROM process_names WHERE pid = {pid_expr})")
    return f"COALESCE({', '.join(parts)}, '')" if parts else "''"


def _col(db: TraceDB, name: str, default: str = "0") -> str:
    return name if db.has("events", name) else default


def _op_ids(db: TraceDB, op: str) -> list[tuple[int, int]]:
    return [k for k, v in db.op_names().items() if v == op]


# --- tools -----------------------------------------------------------------------------------


def get_check_tool(state: ServerState) -> ToolResult:
    report = _wrap_engine(_engine("whyprobe.readiness", "readiness_report"))
    caps = report["kernel"].get("capabilities", {})
    ok = sorted(k for k, v in caps.items() if v.get("ok"))
    libs = report["cuda"].get("libraries", [])
    summary = (
        f"kernel {report['kernel'].get('kernel')}: can_trace={report.get('can_trace')}; "
        f"{len(ok)}/{len(caps)} program/attach types work ({', '.join(ok)}); {len(libs)} CUDA librar{'y' if len(libs) == 1 else 'ies'} found; "
        f"GPU driver: {report['gpu'].get('driver') or 'none'}; {len(report.get('problems', []))} problem(s)"
    )
    return ToolResult(summary, report, len(caps))


def get_trace_stats_tool(state: ServerState, *, pid: int | None, source: str | None, since_ns: int | None, until_ns: int | None, limit: int) -> ToolResult:
    op_stats = _engine("whyprobe.analyze.stats", "op_stats")
    rows = state.cached(
        ("stats", pid, source, since_ns, until_ns),
        lambda: _wrap_engine(op_stats, state.trace(), pid=pid, since_ns=since_ns, until_ns=until_ns, source=source),
    )
    ranked = sorted(rows, key=lambda r: -int(r.get("total_ns") or 0))
    shown, omitted = top_n(ranked, limit)
    lines = [f"{len(rows)} ops; top {len(shown)} by total time:"]
    lines += [
        f"  {r['op']} ({r['source']}): {r['count']} calls, p50 {fmt_ns(r['p50_ns'])}, p99 {fmt_ns(r['p99_ns'])}, max {fmt_ns(r['max_ns'])}"
        for r in shown[:10]
    ]
    return ToolResult("\n".join(lines), {"ops": shown, "omitted": omitted, "total_ops": len(rows)}, len(shown))


def get_causal_chains_tool(state: ServerState, *, since_ns: int | None, until_ns: int | None, pid: int | None, op: str | None, min_severity: str, limit: int) -> ToolResult:
    explain = _engine("whyprobe.analyze.explain", "explain")
    doc = state.cached(
        ("explain", since_ns, until_ns, pid, op, min_severity),
        lambda: _wrap_engine(explain, state.trace(), since_ns=since_ns, until_ns=until_ns, pid=pid, op=op, min_severity=min_severity),
    )
    findings = list(doc.get("findings", []))
    shown, omitted = top_n(findings, limit)
    lines = [f"{len(findings)} finding(s); complete={doc.get('complete')}, dropped_events={doc.get('dropped_events')}"]
    lines += [
        f"  [{f.get('severity')}] {f.get('kind')} {f.get('op')}: lost {fmt_ns(f.get('lost_ns'))}, {f.get('slow_calls', 0)} slow call(s)"
        for f in shown
    ]
    data = {k: v for k, v in doc.items() if k != "findings"}
    data.update(findings=shown, omitted=omitted)
    return ToolResult("\n".join(lines), data, len(shown))


def get_stacks_tool(state: ServerState, *, op: str | None, limit: int, max_frames: int) -> ToolResult:
    from whyprobe.analyze.stacks import top_stacks

    stacks = state.cached(("stacks", op, limit), lambda: top_stacks(state.trace(), op=op, limit=limit))
    out = []
    for s in stacks:
        frames, cut = top_n(s["frames"], max_frames)
        out.append({**s, "frames": frames, "frames_omitted": cut})
    lines = [f"{len(out)} stack(s)" + (f" for {op}" if op else "")]
    lines += [f"  {s['op']}: {s['count']} calls, {fmt_ns(s['total_ns'])} total, {len(s['frames']) + s['frames_omitted']} frames" for s in out]
    return ToolResult("\n".join(lines), {"stacks": out}, len(out))


def run_sql_tool(state: ServerState, *, sql: str, max_rows: int) -> ToolResult:
    opts = state.options
    opts = SafeOptions(**{**opts.__dict__, "max_rows": min(max_rows, opts.max_rows)})
    try:
        res = run_query(state.safe(), sql, (), opts)
    except WhyprobeError as exc:
        raise ToolError(str(exc)) from None
    summary = f"{len(res.rows)} row(s), {len(res.columns)} column(s) in {res.elapsed_ms:.1f} ms"
    if res.truncated:
        summary += f"; truncated: {res.truncated_reason} (add LIMIT/WHERE or aggregate)"
    data = {"columns": res.columns, "rows": res.rows, "truncated": res.truncated, "truncated_reason": res.truncated_reason}
    return ToolResult(summary, data, len(res.rows))


def query_off_cpu_events_tool(state: ServerState, *, pid: int | None, tid: int | None, since_ns: int | None, until_ns: int | None, min_duration_ns: int, limit: int) -> ToolResult:
    db = state.trace()
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
    total = db.conn.execute(f"SELECT COUNT(*), COALESCE(SUM(e.duration), 0) FROM events e WHERE {where}", params).fetchone()
    # On preempted rows aux is the preemptor's run time, not a waker.
    waker = f"(CASE WHEN ({_col(db, 'flags')} & 4) != 0 THEN 0 ELSE e.aux END)" if db.has("events", "aux") else "0"
    sql = (
        f"SELECT e.id, e.timestamp, e.pid, e.tid, {_comm_sql(db, 'e.tid', 'e.pid')}, e.duration, e.arg0, "
        f"({_col(db, 'flags')} & 4) != 0, e.arg1, {_comm_sql(db, 'e.arg1', '-1')}, {waker}, e.ret_code, "
        f"{_comm_sql(db, waker, 'e.ret_code')}, {_col(db, 'cpu', '-1')} "
        f"FROM events e WHERE {where} ORDER BY e.duration DESC LIMIT ?"
    )
    rows = db.conn.execute(sql, [*params, limit]).fetchall()
    keys = ("id", "timestamp_ns", "pid", "tid", "comm", "off_cpu_ns", "prev_state", "preempted", "preemptor_tid", "preemptor_comm", "waker_tid", "waker_pid", "waker_comm", "cpu")
    events = [dict(zip(keys, r)) for r in rows]
    for ev in events:
        ev["preempted"] = bool(ev["preempted"])
    summary = f"{total[0]} off-CPU interval(s), {fmt_ns(total[1])} off-CPU in total; showing the {len(events)} longest"
    return ToolResult(summary, {"total": total[0], "total_off_cpu_ns": total[1], "events": events, "omitted": total[0] - len(events)}, len(events))


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


def _max_duration(state: ServerState, db: TraceDB) -> int:
    def compute() -> int:
        if db.flavor == "whyprobe" and _has_duration_index(db):
            return _max_duration_by_seeks(db)
        return int(db.conn.execute("SELECT COALESCE(MAX(m), 0) FROM (SELECT MAX(duration) AS m FROM events GROUP BY source, op)").fetchone()[0])

    return state.cached(("maxdur",), compute)


def _overlapping(state: ServerState, db: TraceDB, start: int, end: int, extra: str = "", params: tuple = (), limit: int = 100) -> tuple[list[dict], int]:
    """Events whose [timestamp, timestamp+duration) overlaps [start, end), longest first."""
    lo = start - _max_duration(state, db)
    where = f"e.timestamp >= ? AND e.timestamp < ? AND e.timestamp + e.duration > ?{extra}"
    args = (lo, end, start, *params)
    total = db.conn.execute(f"SELECT COUNT(*) FROM events e WHERE {where}", args).fetchone()[0]
    names, sources = db.op_names(), db.source_names()
    rows = db.conn.execute(
        f"SELECT e.id, e.timestamp, e.duration, e.pid, e.tid, e.source, e.op, {_comm_sql(db, 'e.tid', 'e.pid')}, "
        f"e.arg0, e.arg1, {_col(db, 'aux')}, e.ret_code FROM events e WHERE {where} ORDER BY e.duration DESC LIMIT ?",
        (*args, limit),
    ).fetchall()
    out = []
    for r in rows:
        out.append(
            {
                "id": r[0], "timestamp_ns": r[1], "duration_ns": r[2], "pid": r[3], "tid": r[4],
                "source": sources.get(r[5], str(r[5])), "op": names.get((r[5], r[6]), f"{r[5]}:{r[6]}"),
                "comm": r[7], "arg0": r[8], "arg1": r[9], "aux": r[10], "ret_code": r[11],
                "overlap_ns": max(0, min(end, r[1] + r[2]) - max(start, r[1])),
            }
        )
    return out, total


def _event(db: TraceDB, event_id: int) -> tuple | None:
    return db.conn.execute("SELECT id, timestamp, duration, pid, tid, source, op FROM events WHERE id = ?", (event_id,)).fetchone()


def resolve_causal_chain_tool(state: ServerState, *, event_id: int | None, since_ns: int | None, until_ns: int | None, limit: int) -> ToolResult:
    db = state.trace()
    if event_id is None and since_ns is None:
        row = db.conn.execute("SELECT id FROM events WHERE source IN (1, 4) ORDER BY duration DESC LIMIT 1").fetchone() or db.conn.execute(
            "SELECT id FROM events ORDER BY duration DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise ToolError("the trace has no events")
        event_id = row[0]
    if event_id is not None:
        ev = _event(db, event_id)
        if ev is None:
            raise ToolError(f"no event {event_id} (or it belongs to a filtered process); call get_timeline or run_sql to find ids")
        _, start, dur, pid, tid, source, op = ev
        end = start + max(dur, 1)
        own, _ = _overlapping(state, db, start, end, " AND e.tid = ? AND e.id != ?", (tid, event_id), limit)
        others, others_total = _overlapping(state, db, start, end, " AND +e.pid = ? AND e.tid != ?", (pid, tid), limit)
        off = [e for e in own if (e["source"], e["op"]) in (("HOST", "sched_switch"), ("3", "1")) or e["op"] == "sched_switch"]
        off_ns = min(dur, sum(e["overlap_ns"] for e in off))
        name = db.op_names().get((source, op), f"{source}:{op}")
        chain = {
            "event": {"id": event_id, "op": name, "pid": pid, "tid": tid, "timestamp_ns": start, "duration_ns": dur},
            "same_thread": own,
            "same_process_other_threads": others,
            "other_threads_omitted": max(0, others_total - len(others)),
            "off_cpu_ns": off_ns,
            "unexplained_ns": max(0, dur - off_ns),
        }
        summary = (
            f"event {event_id} {name} on tid {tid}: {fmt_ns(dur)}; off-CPU within it {fmt_ns(off_ns)}, "
            f"not covered by evidence {fmt_ns(chain['unexplained_ns'])}; {len(own)} overlapping event(s) on its thread, "
            f"{others_total} on other threads of pid {pid}"
        )
        return ToolResult(summary, chain, len(own) + len(others))
    end = until_ns if until_ns is not None else since_ns + 1_000_000_000
    events, total = _overlapping(state, db, since_ns, end, limit=limit)
    summary = f"{total} event(s) overlap [{since_ns}, {end}) ns; the {len(events)} longest shown"
    return ToolResult(summary, {"window": {"start_ns": since_ns, "end_ns": end}, "events": events, "omitted": total - len(events)}, len(events))


def _launch_rows(db: TraceDB, ids: list[tuple[int, int]], where: str, params: list[Any]) -> np.ndarray:
    """(id, tid, duration, timestamp) of the chosen launches, in the order the (source, op, duration)
    index gives them: per (source, op) pair by (duration, id). A launch op is a large share of
    the trace, so one bulk table scan beats an index lookup per row by 5-10x."""
    data = fastsql.select_i64(
        db.conn, f"SELECT id, tid, duration, timestamp, source, op FROM events WHERE {where.replace('(source', '(+source')}", params, 6, copy=False
    )
    if data is None:
        return np.array(db.conn.execute(f"SELECT id, tid, duration, timestamp FROM events WHERE {where}", params).fetchall(), dtype=np.int64).reshape(-1, 4)
    pair = np.zeros(len(data), np.int64)
    for i, (source, op) in enumerate(ids):
        pair[(data[:, 4] == source) & (data[:, 5] == op) & (pair == 0)] = i + 1
    return data[np.lexsort((data[:, 0], data[:, 2], pair)), :4]


def analyze_gpu_launch_latency_tool(state: ServerState, *, op: str | None, pid: int | None, tid: int | None, outliers: int) -> ToolResult:
    db = state.trace()
    candidates = [op] if op else list(LAUNCH_OPS)
    chosen, ids = None, []
    for name in candidates:
        ids = _op_ids(db, name)
        if ids and db.conn.execute(
            "SELECT 1 FROM events WHERE " + " OR ".join("(source = ? AND op = ?)" for _ in ids) + " LIMIT 1", [x for p in ids for x in p]
        ).fetchone():
            chosen = name
            break
    if chosen is None:
        raise ToolError(f"no {op or 'kernel launch'} events in this trace; call get_trace_stats to see which ops it has")

    def compute() -> dict:
        where = "(" + " OR ".join("(source = ? AND op = ?)" for _ in ids) + ")"
        params: list[Any] = [x for p in ids for x in p]
        for col, val in (("pid", pid), ("tid", tid)):
            if val is not None:
                where += f" AND {col} = ?"
                params.append(val)
        rows = _launch_rows(db, ids, where, params)
        if len(rows) == 0:
            raise ToolError(f"no {chosen} events match pid={pid} tid={tid}")
        d = rows[:, 2]
        q = np.percentile(d, [50, 90, 99, 99.9])
        edges = 2 ** np.arange(int(np.log2(max(d.min(), 1))), int(np.log2(max(d.max(), 1))) + 2, dtype=np.float64)
        hist, _ = np.histogram(d, bins=edges)
        buckets = [{"ge_ns": int(edges[i]), "lt_ns": int(edges[i + 1]), "count": int(c)} for i, c in enumerate(hist) if c]
        order = np.argsort(-d, kind="stable")[:outliers]
        threads = []
        for t in np.unique(rows[:, 1]):
            td = d[rows[:, 1] == t]
            threads.append({"tid": int(t), "count": int(len(td)), "p50_ns": float(np.percentile(td, 50)), "p99_ns": float(np.percentile(td, 99)), "max_ns": int(td.max()), "total_ns": int(td.sum())})
        threads.sort(key=lambda x: -x["total_ns"])
        from whyprobe.analyze.kernels import split_by_kernel

        kernels, kernels_omitted = split_by_kernel(db, where, params)
        return {
            "op": chosen, "count": int(len(d)),
            "p50_ns": float(q[0]), "p90_ns": float(q[1]), "p99_ns": float(q[2]), "p999_ns": float(q[3]),
            "max_ns": int(d.max()), "mean_ns": float(d.mean()), "tail_ratio": float(q[2] / q[0]) if q[0] else None,
            "histogram_log2": buckets,
            "outliers": [{"id": int(rows[i, 0]), "tid": int(rows[i, 1]), "duration_ns": int(rows[i, 2]), "timestamp_ns": int(rows[i, 3])} for i in order],
            "threads": threads[:20], "threads_omitted": max(0, len(threads) - 20),
            "kernels": kernels, "kernels_omitted": kernels_omitted,
        }

    data = state.cached(("launch", chosen, pid, tid, outliers), compute)
    summary = (
        f"{data['count']} {chosen} calls: p50 {fmt_ns(data['p50_ns'])}, p99 {fmt_ns(data['p99_ns'])}, "
        f"max {fmt_ns(data['max_ns'])} (p99/p50 {data['tail_ratio'] or 0:.1f}x) across {len(data['threads']) + data['threads_omitted']} thread(s)"
        f" and {len(data['kernels']) + data['kernels_omitted']} kernel(s)"
    )
    return ToolResult(summary, data, data["count"])


def get_timeline_tool(state: ServerState, *, at_ns: int | None, window_ms: float, pid: int | None, tid: int | None, limit: int) -> ToolResult:
    db = state.trace()
    if at_ns is None:
        row = db.conn.execute("SELECT timestamp + duration / 2 FROM events WHERE source IN (1, 4) ORDER BY duration DESC LIMIT 1").fetchone() or db.conn.execute(
            "SELECT timestamp FROM events ORDER BY duration DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise ToolError("the trace has no events")
        at_ns = int(row[0])
    half = int(window_ms * 1e6 / 2)
    extra, params = "", []
    for col, val in (("+e.pid", pid), ("e.tid", tid)):
        if val is not None:
            extra += f" AND {col} = ?"
            params.append(val)
    events, total = _overlapping(state, db, at_ns - half, at_ns + half, extra, tuple(params), limit)
    events.sort(key=lambda e: (e["timestamp_ns"], e["id"]))
    by_source: dict[str, int] = {}
    for e in events:
        by_source[e["source"]] = by_source.get(e["source"], 0) + 1
    summary = f"{total} event(s) within ±{window_ms / 2:g} ms of {at_ns} ns; {len(events)} shown (longest first, sorted by time): " + ", ".join(f"{k} {v}" for k, v in sorted(by_source.items()))
    return ToolResult(summary, {"at_ns": at_ns, "window_ns": 2 * half, "events": events, "omitted": total - len(events)}, len(events))


def _absent(db: TraceDB, table: str) -> bool:
    return not db.has(table) or db.conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None


def get_tool_footprint_tool(state: ServerState, *, tool_name: str | None, limit: int) -> ToolResult:
    db = state.trace()
    if _absent(db, "tool_calls"):
        return ToolResult("this database has no MCP tool calls (record with `whyprobe footprint` or `whyprobe spy --out`)", {"calls": [], "tools": []})
    where, params = ("WHERE tool_name = ?", (tool_name,)) if tool_name else ("", ())
    tools = [
        dict(zip(("tool_name", "calls", "errors", "p50_ns", "max_ns", "total_ns", "syscalls", "cpu_ns"), r))
        for r in db.conn.execute(
            f"SELECT tool_name, COUNT(*), SUM(is_error), (SELECT duration FROM tool_calls t2 WHERE t2.tool_name = t.tool_name ORDER BY duration LIMIT 1 OFFSET (COUNT(*) - 1) / 2), "
            f"MAX(duration), SUM(duration), SUM(syscalls), SUM(cpu_user_ns + cpu_sys_ns) FROM tool_calls t {where} GROUP BY tool_name ORDER BY SUM(duration) DESC",
            params,
        )
    ]
    cols = ("id", "tool_name", "server_pid", "started_at", "duration", "is_error", "cpu_user_ns", "cpu_sys_ns", "syscalls", "syscall_ns", "files", "endpoints", "children", "cuda_calls")
    calls = [dict(zip(cols, r)) for r in db.conn.execute(f"SELECT {', '.join(cols)} FROM tool_calls {where} ORDER BY duration DESC LIMIT ?", (*params, limit))]
    total = sum(t["calls"] for t in tools)
    summary = f"{total} tool call(s) over {len(tools)} tool(s); slowest {len(calls)} shown"
    return ToolResult(summary, {"tools": tools, "calls": calls, "omitted": total - len(calls)}, len(calls))


def list_mcp_sessions_tool(state: ServerState, *, limit: int) -> ToolResult:
    db = state.trace()
    if _absent(db, "mcp_messages"):
        return ToolResult("this database has no captured MCP messages (record with `whyprobe spy --out DB`)", {"sessions": []})
    cols = ("connection", "transport", "first_ns", "last_ns", "messages", "requests", "errors", "client_pid", "server_pid", "client_comm")
    rows = db.conn.execute(
        "SELECT connection, MIN(transport), MIN(timestamp), MAX(timestamp), COUNT(*), SUM(kind = 'request'), SUM(kind = 'error'), "
        "MIN(CASE WHEN direction = 'client->server' THEN sender_pid END), MIN(CASE WHEN direction = 'client->server' THEN receiver_pid END), "
        "MIN(CASE WHEN direction = 'client->server' THEN sender_comm END) FROM mcp_messages GROUP BY connection ORDER BY MIN(timestamp)"
    ).fetchall()
    sessions, omitted = top_n([dict(zip(cols, r)) for r in rows], limit)
    summary = f"{len(rows)} MCP session(s); {sum(s['messages'] for s in sessions)} messages in the {len(sessions)} shown"
    return ToolResult(summary, {"sessions": sessions, "omitted": omitted}, len(sessions))


def get_mcp_traffic_tool(state: ServerState, *, connection: str | None, method: str | None, tool_name: str | None, limit: int) -> ToolResult:
    db = state.trace()
    if _absent(db, "mcp_messages"):
        return ToolResult("this database has no captured MCP messages (record with `whyprobe spy --out DB`)", {"methods": [], "messages": []})
    conds, params = [], []
    for col, val in (("connection", connection), ("method", method), ("tool_name", tool_name)):
        if val is not None:
            conds.append(f"{col} = ?")
            params.append(val)
    where = ("WHERE " + " AND ".join(conds)) if conds else ""
    methods = [
        dict(zip(("method", "tool_name", "requests", "errors", "avg_latency_ns", "max_latency_ns", "bytes"), r))
        for r in db.conn.execute(
            "SELECT q.method, q.tool_name, COUNT(*), SUM(r.kind = 'error'), AVG(r.latency_ns), MAX(r.latency_ns), SUM(q.size) "
            f"FROM mcp_messages q LEFT JOIN mcp_messages r ON r.request_id = q.id WHERE q.kind = 'request' "
            + (" AND " + " AND ".join("q." + c for c in conds) if conds else "")
            + " GROUP BY q.method, q.tool_name ORDER BY COUNT(*) DESC LIMIT 50",
            params,
        )
    ]
    cols = ("id", "timestamp", "connection", "direction", "kind", "method", "tool_name", "jsonrpc_id", "size", "latency_ns", "payload")
    total = db.conn.execute(f"SELECT COUNT(*) FROM mcp_messages {where}", params).fetchone()[0]
    messages = [dict(zip(cols, r)) for r in db.conn.execute(f"SELECT {', '.join(cols)} FROM mcp_messages {where} ORDER BY timestamp LIMIT ?", (*params, limit))]
    for m in messages:
        if m["payload"] and len(m["payload"]) > 2000:
            m["payload"] = m["payload"][:2000] + f"... ({len(m['payload']) - 2000} more chars)"
    summary = f"{total} message(s); {len(methods)} request method/tool pair(s); first {len(messages)} messages shown"
    return ToolResult(summary, {"methods": methods, "messages": messages, "omitted": total - len(messages)}, len(messages))


def query_fleet_tool(state: ServerState, *, sql: str, nodes: list[str] | None, timeout_s: float) -> ToolResult:
    from whyprobe.server.fleet import fan_out_sql

    targets = nodes or state.fleet_nodes
    if not targets:
        raise ToolError("no fleet nodes given or configured; pass nodes=['host:port', ...] of `whyprobe mcp --http` servers")
    res = fan_out_sql(targets, sql, timeout_s=timeout_s, token=os.environ.get(state.settings.token_env))
    summary = f"{len(res.rows)} row(s) from {len(res.ok_nodes)}/{len(targets)} node(s)"
    if res.failed:
        summary += "; partial: " + "; ".join(f"{n}: {why}" for n, why in res.failed.items())
    data = {"columns": res.columns, "rows": res.rows, "partial": bool(res.failed), "failed_nodes": res.failed, "ok_nodes": res.ok_nodes}
    return ToolResult(summary, data, len(res.rows))


def run_demo_tool(state: ServerState, *, name: str) -> ToolResult:
    import tempfile

    run_replay = _engine("whyprobe.demo.scenarios", "run_replay")
    out_dir = Path(tempfile.mkdtemp(prefix="whyprobe-demo-"))
    db_path = Path(_wrap_engine(run_replay, name, out_dir / f"{name}.db"))
    demo = ServerState(db_path, SecuritySettings())
    stats = get_trace_stats_tool(demo, pid=None, source=None, since_ns=None, until_ns=None, limit=10)
    summary = f"demo {name!r} replayed into {db_path}; " + stats.summary
    return ToolResult(summary, {"database": str(db_path), "stats": stats.data}, stats.rows)


def get_test_report_tool(state: ServerState, *, path: str | None) -> ToolResult:
    report = Path(path) if path else (state.settings.junit_path or Path("tests/artifacts/junit.xml"))
    if not report.is_file():
        raise ToolError(f"no JUnit report at {report}; produce one with `pytest --junitxml={report}`")
    try:
        root = ET.parse(report).getroot()
    except ET.ParseError as exc:
        raise ToolError(f"{report} is not valid JUnit XML: {exc}") from None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = {k: sum(int(s.get(k, 0) or 0) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    totals["time_s"] = round(sum(float(s.get("time", 0) or 0) for s in suites), 3)
    failed = []
    for case in root.iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            failed.append({"test": f"{case.get('classname')}::{case.get('name')}", "message": (bad.get("message") or "")[:300]})
    shown, omitted = top_n(failed, 20)
    digest = hashlib.sha256(report.read_bytes()).hexdigest()[:12]
    summary = f"{totals['tests']} tests: {totals['failures']} failed, {totals['errors']} errors, {totals['skipped']} skipped in {totals['time_s']} s"
    return ToolResult(summary, {"report": str(report), "sha256_12": digest, **totals, "failed": shown, "failed_omitted": omitted}, len(shown))


def warm_up(state: ServerState) -> None:
    """Fill the caches of the slow, argument-free defaults so an agent's first calls answer fast."""
    for fn, kwargs in (
        (get_trace_stats_tool, dict(pid=None, source=None, since_ns=None, until_ns=None, limit=20)),
        (get_stacks_tool, dict(op=None, limit=10, max_frames=16)),
        (analyze_gpu_launch_latency_tool, dict(op=None, pid=None, tid=None, outliers=10)),
        (get_causal_chains_tool, dict(since_ns=None, until_ns=None, pid=None, op=None, min_severity="low", limit=10)),
    ):
        try:
            fn(state, **kwargs)
        except Exception:  # a tool that cannot answer says so when called; warming is best effort
            continue
