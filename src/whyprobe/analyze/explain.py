"""`explain`: latency tails and GPU-idle gaps tied to the kernel evidence that overlaps them.

Public API (used by the CLI, the MCP server and `trace --explain`):

* ``explain(db, since_ns=, until_ns=, pid=, op=, min_severity=) -> dict`` — the
  `explain --json` document (DESIGN.md), nothing stored;
* ``store_findings(path, doc) -> int`` — append the findings to the `findings`
  table (history: a finding seen again is a new row with its window);
* ``LiveExplainer`` — the same engine, fed batches of events while tracing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np

from whyprobe.analyze import cudaops, engine
from whyprobe.analyze.engine import FirstCalls, Names
from whyprobe.analyze.findings import GAP_OP, INGERO_NOTE, TAIL_SOURCES, Context, analyze, retransmit_peer
from whyprobe.analyze.live import LiveExplainer
from whyprobe.analyze.offcpu import SCHED_SWITCH
from whyprobe.analyze.samples import CPU_SAMPLE, Samples
from whyprobe.errors import StoreError, WhyprobeError
from whyprobe.events import F_DETAIL_LOST, F_SOCK_OWNER, Source
from whyprobe.store.kernels import kernel_names
from whyprobe.store.reader import EventColumns, TraceDB

__all__ = ["explain", "store_findings", "LiveExplainer", "GAP_OP"]

STACK_FRAMES = 8


# ---------------------------------------------------------------- reading the database


def trace_names(db: TraceDB) -> Names:
    """Thread and process names as the trace stored them."""
    names = Names()
    if db.has("thread_names"):
        names.threads = {int(t): (int(p), str(c)) for t, p, c in db.conn.execute("SELECT tid, pid, comm FROM thread_names")}
    if db.has("process_names", "name"):
        names.procs = {int(p): str(n) for p, n in db.conn.execute("SELECT pid, name FROM process_names")}
    return names


def _scalar(db: TraceDB, sql: str, params: tuple = ()) -> int | None:
    row = db.conn.execute(sql, params).fetchone()
    return None if row is None or row[0] is None else int(row[0])


def _drops(db: TraceDB) -> int:
    cols = [c for c in ("ring_drops", "queue_drops", "rate_drops") if db.has("sessions", c)]
    if not cols:
        return 0
    return _scalar(db, f"SELECT COALESCE(SUM({' + '.join(cols)}), 0) FROM sessions") or 0


def _payload_drops(db: TraceDB) -> tuple[int, int]:
    """(payload records lost in the kernel, events stored without their detail because of it)."""
    if not db.has("sessions", "payload_drops"):
        return 0, 0
    lost = _scalar(db, "SELECT COALESCE(SUM(payload_drops), 0) FROM sessions") or 0
    bare = _scalar(db, "SELECT COUNT(*) FROM events WHERE flags & ?", (F_DETAIL_LOST,)) if lost and db.has("events", "flags") else 0
    return lost, bare or 0


def _not_stored(db: TraceDB) -> dict[tuple[int, int, int], int]:
    """(source, op, pid) → events the recorder counted but did not keep (event_aggregates)."""
    if not (db.has("event_aggregates", "count") and db.has("event_aggregates", "stored")):
        return {}
    rows = db.conn.execute(
        "SELECT source, op, pid, SUM(count), SUM(stored) FROM event_aggregates GROUP BY source, op, pid HAVING SUM(count) > SUM(stored)"
    )
    return {(int(s), int(o), int(p)): int(c) - int(k) for s, o, p, c, k in rows}


def sched_incomplete(db: TraceDB) -> dict[int, tuple[int, int]]:
    """pid → (sched_switch rows stored, rows counted) where the aggregates count more than are stored."""
    if not db.has("event_aggregates", "count"):
        return {}
    counted = dict(db.conn.execute("SELECT pid, SUM(count) FROM event_aggregates WHERE source = ? AND op = ? GROUP BY pid", SCHED_SWITCH))
    if not counted:
        return {}
    stored = dict(db.conn.execute("SELECT pid, COUNT(*) FROM events WHERE source = ? AND op = ? GROUP BY pid", SCHED_SWITCH))
    return {int(p): (int(stored.get(p, 0)), int(c)) for p, c in counted.items() if stored.get(p, 0) < 0.98 * c}


def _stack(db: TraceDB, stack_hash: int) -> list[str]:
    if not stack_hash or not db.has("stack_traces", "frames"):
        return []
    from whyprobe.analyze.stacks import frame_label, parse_frames

    row = db.conn.execute("SELECT frames FROM stack_traces WHERE hash = ?", (stack_hash,)).fetchone()
    return [frame_label(f) for f in parse_frames(row[0] if row else None)][:STACK_FRAMES]


def _samples(db: TraceDB, start: int, end: int) -> Samples | None:
    """The on-CPU samples in [start, end) with their stacks' frames, or None when the trace has none."""
    if not db.has("events", "stack_hash"):
        return None
    rows = db.load_arrays(("timestamp", "tid", "stack_hash"), "source = ? AND op = ? AND timestamp >= ? AND timestamp < ?", (*CPU_SAMPLE, start, end))
    if not len(rows["tid"]):
        return None
    from whyprobe.analyze.stacks import parse_frames

    frames: dict[int, list[dict]] = {}
    if db.has("stack_traces", "frames"):
        distinct = [h for h in np.unique(rows["stack_hash"]).tolist() if h]
        for i in range(0, len(distinct), 500):
            chunk = distinct[i : i + 500]
            sql = f"SELECT hash, frames FROM stack_traces WHERE hash IN ({', '.join('?' * len(chunk))})"
            frames.update((int(h), parse_frames(raw)) for h, raw in db.conn.execute(sql, chunk))
    return Samples(rows["tid"], rows["timestamp"], rows["stack_hash"], lambda h: frames.get(h, []))


_CALL_COLS = ("timestamp", "pid", "tid", "source", "op", "duration", "arg0", "arg2", "stack_hash")
EVIDENCE_COLS = ("timestamp", "pid", "tid", "source", "op", "duration", "arg0", "arg1", "arg2", "aux", "ret_code", "flags", "cpu", "stack_hash")
HOST_SOURCES = (int(Source.IO), int(Source.TCP), int(Source.NET), int(Source.SYSCALL))


def _load(db: TraceDB, start: int, end: int, whole: bool, degraded: bool) -> EventColumns:
    """The events explain needs (unordered): calls, plus the evidence of the threads and
    processes that make them, read in ONE scan of the table (most of it is needed, and a
    scan is several times cheaper than index lookups plus a sort; `+source` keeps SQLite
    on it). Evidence starts up to the longest duration before the window, so intervals
    reaching into it count."""
    if whole:
        span, args = "", ()
    else:
        margin = _scalar(db, "SELECT MAX(duration) FROM events") or 0
        span, args = " AND timestamp >= ? AND timestamp < ?", (start - margin, end)
    sources = (*TAIL_SOURCES, SCHED_SWITCH[0], *HOST_SOURCES)
    marks = ", ".join("?" * len(sources))
    # Only degraded (Ingero) off-CPU rows take their CPU from the cpu column; ours use arg2.
    cols = EVIDENCE_COLS if degraded else tuple(c for c in EVIDENCE_COLS if c != "cpu")
    rows = db.load_arrays(cols, f"+source IN ({marks}){span}", (*sources, *args))
    source, tid = rows["source"], rows["tid"]
    is_call = np.isin(source, TAIL_SOURCES)
    tids, pids = np.unique(tid[is_call]), np.unique(rows["pid"][is_call])
    mine = np.isin(tid, tids)
    sched = (source == SCHED_SWITCH[0]) & np.isin(rows["op"], (SCHED_SWITCH[1], *engine.MEMORY_STALL_OPS)) & mine
    oom = (source == SCHED_SWITCH[0]) & (rows["op"] == engine.OOM_KILL_OP)
    by_pid = (source == int(Source.IO)) | (source == int(Source.TCP))
    by_tid = (source == int(Source.NET)) | (source == int(Source.SYSCALL))
    host = (by_pid & np.isin(rows["pid"], pids)) | (by_tid & mine)
    return rows[is_call | sched | oom | host].compact()


def _retransmits(db: TraceDB, start: int, end: int) -> list[tuple[int, int, str]]:
    """(timestamp, owner tid, peer) of TCP retransmits the kernel tied to a traced thread's socket."""
    if not db.has("events", "detail") or not db.has("events", "flags"):
        return []
    rows = db.conn.execute(
        "SELECT timestamp, tid, detail FROM events WHERE source = ? AND op = 1 AND (flags & ?) != 0 AND timestamp >= ? AND timestamp < ? ORDER BY timestamp",
        (int(Source.TCP), F_SOCK_OWNER, start, end),
    ).fetchall()
    return [(int(ts), int(tid), retransmit_peer(detail)) for ts, tid, detail in rows]


def first_calls(db: TraceDB, gpu_calls: np.ndarray, whole_trace: bool) -> FirstCalls:
    firsts = FirstCalls()
    if whole_trace:
        firsts.learn(gpu_calls)
    else:
        firsts.learn(db.load_arrays(_CALL_COLS, "source IN (?, ?)", cudaops.GPU_SOURCES))
    return firsts


def explain(
    db: TraceDB,
    *,
    since_ns: int | None = None,
    until_ns: int | None = None,
    pid: int | None = None,
    op: str | None = None,
    min_severity: str = "low",
) -> dict:
    """The `explain --json` document for the calls in [since_ns, until_ns) (nothing is stored)."""
    if min_severity not in engine.SEVERITY_RANK:
        raise WhyprobeError(f"min_severity must be one of high, medium, low (got {min_severity!r})")
    first = _scalar(db, "SELECT MIN(timestamp) FROM events")
    last = _scalar(db, "SELECT MAX(timestamp + duration) FROM events")
    start = since_ns if since_ns is not None else (first or 0)
    end = until_ns if until_ns is not None else (last or 0) + 1
    dropped = _drops(db)
    not_stored = _not_stored(db)
    doc = {
        "database": str(db.path), "flavor": db.flavor, "window": {"start_ns": int(start), "end_ns": int(end)},
        "complete": dropped == 0 and not not_stored, "dropped_events": int(dropped),
        "not_stored_events": int(sum(not_stored.values())), "notes": [], "findings": [],
    }
    if not_stored:
        doc["notes"].append(
            f"The recorder counted {doc['not_stored_events']} events it did not store (event_aggregates): evidence may be missing."
        )
    if dropped:
        doc["notes"].append(f"{dropped} events were dropped while tracing: evidence may be missing.")
    payloads_lost, bare = _payload_drops(db)
    doc["payload_drops"], doc["events_without_detail"] = int(payloads_lost), int(bare)
    if payloads_lost:
        doc["notes"].append(
            f"{payloads_lost} payload records (paths, argv, addresses) were lost while tracing: {bare} events are stored"
            " without their detail (detail NULL, flag F_DETAIL_LOST). No event is missing for it."
        )
    if first is None or end <= start:
        return doc
    whole = (since_ns is None or since_ns <= first) and (until_ns is None or until_ns > (last or 0))
    degraded = db.flavor == "ingero" or not db.has("events", "aux")
    events = _load(db, start, end, whole, degraded)
    if degraded:
        doc["notes"].append(INGERO_NOTE)
    names = trace_names(db)
    names.learn(events)
    incomplete = sched_incomplete(db)
    ctx = Context(lambda h: _stack(db, h), names, db.op_names(), db.source_names(), (start, end), degraded, incomplete, not_stored,
                  samples=_samples(db, start, end))
    ctx.kernels = kernel_names(db)
    ctx.retransmits = _retransmits(db, start, end)
    gpu_loaded = events[cudaops.is_gpu_call(events)]
    firsts = first_calls(db, gpu_loaded, whole_trace=since_ns is None or since_ns <= first)
    findings = analyze(events, (start, end), ctx, firsts, pid=pid, op=op, on_cpu_ok=lambda p: p not in incomplete)
    doc["findings"] = engine.rank(engine.mark_minor(engine.merge(findings), end - start), min_severity)
    return doc


# ---------------------------------------------------------------- history


def store_findings(path: str | os.PathLike, doc: dict) -> int:
    """Append `doc`'s findings to the findings table of the whyprobe database at `path`; rows added.

    Raises StoreError (one sentence) when the file is not a writable whyprobe database."""
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"No such database: {p}")
    if not os.access(p, os.W_OK) or not os.access(p.parent, os.W_OK):
        raise StoreError(f"{p} is read-only; findings not stored (use --no-store to silence this)")
    try:
        conn = sqlite3.connect(p)
    except sqlite3.Error as exc:
        raise StoreError(f"Cannot open {p} for writing: {exc}") from None
    try:
        producer = None
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'schema_info'").fetchone():
            row = conn.execute("SELECT value FROM schema_info WHERE key = 'producer'").fetchone()
            producer = row[0] if row else None
        if producer != "whyprobe":
            raise StoreError(f"{p} is not a whyprobe database (e.g. an Ingero file); findings not stored")
        from whyprobe.store import schema

        schema.create(conn)
        now = time.time_ns()
        window = doc["window"]
        rows = [
            (f["id"], now, window["start_ns"], window["end_ns"], f["kind"], f["severity"], f.get("source", ""), f.get("op", ""),
             int(f.get("pid", 0)), int(f.get("tid", 0)), int(f.get("lost_ns", 0)), f.get("summary", ""), json.dumps(f, sort_keys=True))
            for f in doc["findings"]
        ]
        with conn:
            conn.executemany(
                "INSERT INTO findings(finding_key, created_at, window_start, window_end, kind, severity, source, op, pid, tid, lost_ns, summary, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)
    except sqlite3.Error as exc:
        raise StoreError(f"Cannot store findings in {p}: {exc}") from None
    finally:
        conn.close()

