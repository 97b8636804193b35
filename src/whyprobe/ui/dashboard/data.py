"""The dashboard's JSON documents, computed from a read-only TraceDB.

Every document is small whatever the trace size: the timeline is downsampled
per thread, histograms are log2 buckets, lists are capped. Timestamps go out
as offsets from the window start (ns fit a JS number only below 2**53), and
absolute unix ns as strings.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from whyprobe.analyze.explain import explain
from whyprobe.analyze.offcpu import SCHED_SWITCH
from whyprobe.analyze.stats import summarize, trace_labels
from whyprobe.errors import WhyprobeError
from whyprobe.events import Source, op_name
from whyprobe.store.reader import TraceDB

# Timeline lanes inside a thread's row, in drawing order.
LANES = ("cuda", "offcpu", "io", "other")
_CUDA_SOURCES = (int(Source.CUDA), int(Source.DRIVER))
_IO_SOURCES = (int(Source.IO), int(Source.TCP), int(Source.NET), int(Source.SYSCALL))

MAX_THREADS = 48
MAX_TIMELINE_LIMIT = 20_000
MAX_TIMELINE_EVENTS = 30_000  # over all threads: keeps a response near 1 MB
MAX_TOOL_CALLS = 500
MAX_LIST_ITEMS = 20
MAX_LISTED = 200  # processes / threads in the summary; the totals stay exact


def lane_of(source: int, op: int) -> str:
    if source in _CUDA_SOURCES:
        return "cuda"
    if (source, op) == SCHED_SWITCH:
        return "offcpu"
    if source in _IO_SOURCES:
        return "io"
    return "other"


def _names(db: TraceDB) -> tuple[dict[int, str], dict[int, str]]:
    """(pid → comm, tid → comm) from whichever name tables the file has."""
    procs: dict[int, str] = {}
    threads: dict[int, str] = {}
    if db.has("process_names"):
        procs = {int(p): str(n) for p, n in db.conn.execute("SELECT pid, name FROM process_names")}
    if db.has("thread_names"):
        threads = {int(t): str(c) for t, c in db.conn.execute("SELECT tid, comm FROM thread_names")}
    return procs, threads


def _op_label(db_ops: dict[tuple[int, int], str], source: int, op: int) -> str:
    return db_ops.get((source, op)) or op_name(source, op)


def _window(db: TraceDB) -> tuple[int, int]:
    lo, hi = db.conn.execute("SELECT MIN(timestamp), MAX(timestamp + duration) FROM events").fetchone()
    return (int(lo or 0), int(hi or 0))


def _drops(db: TraceDB) -> dict[str, int]:
    cols = [c for c in ("ring_drops", "queue_drops", "rate_drops", "pruned") if db.has("sessions", c)]
    if not cols:
        return {}
    row = db.conn.execute(f"SELECT {', '.join(f'COALESCE(SUM({c}), 0)' for c in cols)} FROM sessions").fetchone()
    return {c: int(v) for c, v in zip(cols, row)}


def _session(db: TraceDB) -> dict[str, str]:
    wanted = ("hostname", "gpu_model", "gpu_driver", "cpu_model", "kernel", "cuda_ver", "whyprobe_ver", "ingero_ver")
    cols = [c for c in wanted if db.has("sessions", c)]
    if not cols:
        return {}
    row = db.conn.execute(f"SELECT {', '.join(cols)} FROM sessions ORDER BY started_at LIMIT 1").fetchone()
    return {c: str(v) for c, v in zip(cols, row or ()) if v not in (None, "")}


def summary(db: TraceDB) -> dict[str, Any]:
    """Facts for the page header: window, counts, processes, threads, drops, flavor."""
    start, end = _window(db)
    procs, thread_comms = _names(db)
    db_ops = db.op_names()
    ops = [
        {"source": int(s), "op": int(o), "name": _op_label(db_ops, int(s), int(o)), "lane": lane_of(int(s), int(o)), "count": int(n)}
        for s, o, n in db.conn.execute("SELECT source, op, COUNT(*) FROM events GROUP BY source, op ORDER BY COUNT(*) DESC")
    ]
    per_thread = db.conn.execute(
        "SELECT tid, pid, COUNT(*),"
        f" SUM(CASE WHEN source IN {_CUDA_SOURCES} THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN source = ? AND op = ? THEN duration ELSE 0 END)"
        " FROM events GROUP BY tid, pid ORDER BY 4 DESC, 3 DESC",
        SCHED_SWITCH,
    ).fetchall()
    threads = [
        {"tid": int(t), "pid": int(p), "comm": thread_comms.get(int(t)) or procs.get(int(p), ""), "events": int(n), "cuda_calls": int(c), "offcpu_ns": int(off)}
        for t, p, n, c, off in per_thread
    ]
    per_pid: dict[int, int] = dict.fromkeys(procs, 0)
    for t in threads:
        per_pid[t["pid"]] = per_pid.get(t["pid"], 0) + t["events"]
    processes = [{"pid": p, "comm": procs.get(p, ""), "events": n} for p, n in sorted(per_pid.items())]
    drops = _drops(db)
    return {
        "database": str(db.path),
        "flavor": db.flavor,
        "window": {"start_ns": str(start), "end_ns": str(end), "duration_ns": end - start},
        "events": sum(o["count"] for o in ops),
        "ops": ops,
        "processes": processes[:MAX_LISTED],
        "processes_total": len(processes),
        "processes_with_events": sum(1 for p in processes if p["events"]),
        "threads": threads[:MAX_LISTED],
        "threads_total": len(threads),
        "gpu_threads": sum(1 for t in threads if t["cuda_calls"]),
        "drops": drops,
        "complete": not any(drops.get(k, 0) for k in ("ring_drops", "queue_drops", "rate_drops")),
        "session": _session(db),
        "tables": sorted(t for t in ("findings", "tool_calls", "mcp_messages", "stack_traces") if db.has(t)),
    }


def timeline(db: TraceDB, start_ns: int | None = None, end_ns: int | None = None, limit: int = 2000) -> dict[str, Any]:
    """Events per thread overlapping [start_ns, end_ns], at most `limit` per thread
    (lowered so that all threads together stay under MAX_TIMELINE_EVENTS).

    The range is split into equal bins per lane (CUDA, off-CPU, I/O, other) of
    each thread and the longest event of each bin is kept, with how many events
    the bin held — so a burst of tiny calls stays visible next to long
    off-CPU intervals instead of being crowded out by them.
    Each event is [offset_ns, duration_ns, op_index, ret_code, events_in_bin, flags].
    """
    w_start, w_end = _window(db)
    start = w_start if start_ns is None else int(start_ns)
    end = w_end if end_ns is None else int(end_ns)
    if end <= start:
        end = start + 1
    limit = max(1, min(int(limit), MAX_TIMELINE_LIMIT))
    ev = db.load_events("timestamp <= ? AND timestamp + duration >= ?", (end, start))
    procs, thread_comms = _names(db)
    db_ops = db.op_names()

    pairs = np.unique(np.stack([ev["source"], ev["op"]], axis=1), axis=0) if len(ev) else np.zeros((0, 2), np.int64)
    ops = [{"source": int(s), "op": int(o), "name": _op_label(db_ops, int(s), int(o)), "lane": lane_of(int(s), int(o))} for s, o in pairs]
    op_index = np.searchsorted(pairs[:, 0] * (1 << 32) + pairs[:, 1], ev["source"] * (1 << 32) + ev["op"]) if len(ev) else np.zeros(0, np.int64)
    lane_ids = np.array([LANES.index(o["lane"]) for o in ops], dtype=np.int64)
    ev_lane = lane_ids[op_index] if len(ev) else np.zeros(0, np.int64)

    tids, counts = np.unique(ev["tid"], return_counts=True)
    cuda_tids = set(ev["tid"][np.isin(ev["source"], _CUDA_SOURCES)].tolist())
    # Threads that drive the GPU first, then the busiest.
    order = sorted(range(len(tids)), key=lambda i: (int(tids[i]) not in cuda_tids, -int(counts[i]), int(tids[i])))
    span = end - start
    shown = order[:MAX_THREADS]
    limit = max(1, min(limit, MAX_TIMELINE_EVENTS // max(len(shown), 1)))
    rows = []
    for i in shown:
        tid = int(tids[i])
        mine = ev["tid"] == tid
        t_ev, t_lane = ev[mine], ev_lane[mine]
        t_idx = op_index[mine]
        present = np.unique(t_lane)
        bins = max(1, limit // len(present))
        mid = np.clip(t_ev["timestamp"], start, end) - start
        b = np.minimum(mid * bins // span, bins - 1)
        key = t_lane * bins + b
        # Longest first within each (lane, bin); np.unique keeps the first occurrence.
        srt = np.lexsort((-t_ev["duration"], key))
        _, first, per_bin = np.unique(key[srt], return_index=True, return_counts=True)
        keep = srt[first]
        by_time = np.argsort(t_ev["timestamp"][keep], kind="stable")
        keep, per_bin = keep[by_time], per_bin[by_time]
        kept = t_ev[keep]
        events = np.stack(
            [kept["timestamp"] - start, kept["duration"], t_idx[keep], kept["ret_code"], per_bin, kept["flags"]], axis=1
        ).tolist()
        pid = int(t_ev["pid"][0])
        rows.append(
            {
                "tid": tid,
                "pid": pid,
                "comm": thread_comms.get(tid) or procs.get(pid, ""),
                "drives_gpu": tid in cuda_tids,
                "total": int(counts[i]),
                "lanes": [LANES[int(x)] for x in present],
                "events": events,
            }
        )
    return {
        "origin_ns": str(start),
        "start_ns": str(start),
        "end_ns": str(end),
        "span_ns": span,
        "window": {"start_ns": str(w_start), "end_ns": str(w_end)},
        "limit": limit,
        "lanes": list(LANES),
        "ops": ops,
        "threads": rows,
        "threads_omitted": max(0, len(tids) - MAX_THREADS),
        "events_in_range": int(len(ev)),
    }


def histograms(db: TraceDB) -> dict[str, Any]:
    """Per-op statistics (analyze/stats.py, as `stats` reports them) with log2 latency histograms:
    bucket k counts durations in [2**k, 2**(k+1)) ns (k=0 also holds 0)."""
    cols = db.load_arrays(("source", "op", "duration", "ret_code"))
    source, op, duration = cols["source"], cols["op"], cols["duration"]
    out = []
    for st in summarize(source, op, duration, cols["ret_code"], trace_labels(db)):
        s, o = st["source_id"], st["op_id"]
        k = np.floor(np.log2(np.maximum(duration[(source == s) & (op == o)], 1))).astype(np.int64)
        lo, hi = int(k.min()), int(k.max())
        counts = np.bincount(k - lo, minlength=hi - lo + 1)
        out.append(
            {
                "source": s, "op": o, "name": st["op"], "lane": lane_of(s, o),
                **{key: st[key] for key in ("count", "p50_ns", "p99_ns", "max_ns", "total_ns", "errors")},
                "buckets": [{"lo_ns": 1 << (lo + j), "hi_ns": 1 << (lo + j + 1), "count": int(c)} for j, c in enumerate(counts.tolist())],
            }
        )
    out.sort(key=lambda h: (LANES.index(h["lane"]), -h["total_ns"]))
    return {"histograms": out}


def findings(db: TraceDB) -> dict[str, Any]:
    """What `explain` finds in the trace (the same document as `explain --json`)."""
    try:
        report = explain(db, min_severity="low")
    except WhyprobeError as exc:
        return {"source": "none", "findings": [], "note": f"explain failed: {exc}"}
    return {
        "source": "explain",
        "findings": list(report.get("findings", [])),
        "complete": report.get("complete", True),
        "dropped_events": report.get("dropped_events", 0),
        "note": "" if report.get("findings") else "explain found no latency tails or GPU gaps in this trace",
    }


def _json_list(text: Any) -> list:
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def tool_calls(db: TraceDB) -> dict[str, Any]:
    """MCP tool calls with their footprints, newest first, capped at MAX_TOOL_CALLS."""
    if not db.has("tool_calls"):
        return {"tool_calls": [], "total": 0, "note": "this database has no tool_calls table (record with `whyprobe footprint` or `spy`)"}
    total = db.conn.execute("SELECT COUNT(*) FROM tool_calls").fetchone()[0]
    start, _ = _window(db)
    cols = (
        "id", "server_pid", "tool_name", "started_at", "duration", "is_error", "cpu_user_ns", "cpu_sys_ns",
        "syscalls", "syscall_ns", "files", "endpoints", "children", "block_bytes", "cuda_calls",
    )
    cur = db.conn.execute(f"SELECT {', '.join(cols)} FROM tool_calls ORDER BY started_at DESC, id DESC LIMIT ?", (MAX_TOOL_CALLS,))
    out = []
    for row in cur:
        call = dict(zip(cols, row))
        call["offset_ns"] = int(call.pop("started_at")) - start
        call["is_error"] = bool(call["is_error"])
        for key in ("files", "endpoints", "children"):
            items = _json_list(call[key])
            call[key] = [x if isinstance(x, str) else json.dumps(x, sort_keys=True) for x in items[:MAX_LIST_ITEMS]]
            call[f"{key}_total"] = len(items)
        out.append(call)
    return {"tool_calls": out, "total": int(total), "note": "" if total else "no MCP tool calls recorded"}
