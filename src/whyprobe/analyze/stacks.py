"""Stacks behind events: which call paths the calls of an op come from.

`stack_traces.frames` is JSON `[{"s": symbol, "f": file, "l": line?, "py": bool?}]`,
innermost frame first (Ingero writes `{"i": ip, "f": file}` when a frame has no symbol).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from whyprobe.demangle import demangle
from whyprobe.store import fastsql
from whyprobe.store.reader import TraceDB


def frame_label(frame: dict[str, Any]) -> str:
    """One frame as `symbol (file:line)`, the symbol falling back to the IP."""
    name = frame.get("s") or frame.get("i") or "?"
    where = frame.get("f") or ""
    if frame.get("l"):
        where = f"{where}:{frame['l']}"
    return f"{name} ({where})" if where else str(name)


def parse_frames(raw: str | None) -> list[dict[str, Any]]:
    """Stored frames with native symbols demangled (imported and older databases hold mangled names)."""
    if not raw:
        return []
    try:
        frames = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(frames, list):
        return []
    out = []
    for f in frames:
        if not isinstance(f, dict):
            continue
        if not f.get("py") and isinstance(f.get("s"), str):
            f["s"] = demangle(f["s"])
        out.append(f)
    return out


def _is_eval_loop(frame: dict[str, Any]) -> bool:
    return not frame.get("py") and str(frame.get("s") or "").startswith("_PyEval_EvalFrame")


def root_first(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One call path, outermost frame first, for a flame graph.

    Stored stacks hold the Python frames (innermost first) and then the native
    ones (innermost first). A flame graph needs them interleaved: the
    interpreter's native frames down to its eval loop, the Python frames where
    the eval loop runs them, then the native frames below the last Python call
    (e.g. ctypes, then cudaMalloc). One eval-loop frame can run several Python
    frames (3.11+ inlines calls), so all the Python frames replace the span of
    eval-loop frames as a whole; native frames inside that span (C functions
    calling back into Python) cannot be placed between them and are left out.
    When the native unwind stopped before the eval loop, the Python frames are
    the root and the native frames hang below them."""
    python = [f for f in frames if f.get("py")][::-1]
    native = [f for f in frames if not f.get("py")][::-1]
    if not python:
        return native
    evals = [i for i, f in enumerate(native) if _is_eval_loop(f)]
    if not evals:
        return python + native
    return native[: evals[0]] + python + native[evals[-1] + 1 :]


def _op_filter(db: TraceDB, op: str | None) -> tuple[str, tuple]:
    if op is None:
        return "", ()
    ids = [(s, o) for (s, o), name in db.op_names().items() if name == op]
    if not ids:
        return " AND 0", ()
    return " AND (" + " OR ".join("(e.source = ? AND e.op = ?)" for _ in ids) + ")", tuple(x for pair in ids for x in pair)


def _grouped_fast(db: TraceDB, where: str, params: tuple, frames_col: str) -> list[tuple[int, int, int, int, int, str]] | None:
    """`_grouped` by one bulk read of the events with a stack and a numpy group-by (the SQL
    GROUP BY sorts every row in a temp B-tree); None when the C helper is not there or
    stack hashes repeat (the join would then multiply rows, which only SQL reproduces)."""
    rows = fastsql.select_i64(db.conn, f"SELECT e.stack_hash, e.source, e.op, e.duration FROM events e WHERE e.stack_hash != 0{where}", params, 4, copy=False)
    if rows is None or db.conn.execute("SELECT COUNT(*) != COUNT(DISTINCT hash) FROM stack_traces").fetchone()[0]:
        return None
    order = np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))
    keys = rows[order, :3]
    starts = np.flatnonzero(np.concatenate(([True], np.any(keys[1:] != keys[:-1], axis=1)))) if len(keys) else np.zeros(0, np.int64)
    counts = np.diff(np.append(starts, len(keys)))
    sums = np.add.reduceat(rows[order, 3], starts) if len(starts) else np.zeros(0, np.int64)
    hashes = keys[starts, 0]
    frames: dict[int, str] = {}
    distinct = np.unique(hashes).tolist()
    for i in range(0, len(distinct), 500):
        chunk = distinct[i : i + 500]
        sql = f"SELECT s.hash, {frames_col} FROM stack_traces s WHERE s.hash IN ({', '.join('?' * len(chunk))})"
        frames.update(db.conn.execute(sql, chunk).fetchall())
    return [
        (h, src, o, c, t, frames[h])
        for (h, src, o), c, t in zip(keys[starts].tolist(), counts.tolist(), sums.tolist())
        if h in frames
    ]


def _grouped(db: TraceDB, op: str | None) -> list[tuple[int, int, int, int, int, str]]:
    if not db.has("stack_traces") or not db.has("events", "stack_hash"):
        return []
    where, params = _op_filter(db, op)
    frames_col = "s.frames" if db.has("stack_traces", "frames") else "''"
    fast = _grouped_fast(db, where, params, frames_col)
    if fast is not None:
        return fast
    sql = (
        f"SELECT e.stack_hash, e.source, e.op, COUNT(*), SUM(e.duration), {frames_col} "
        "FROM events e JOIN stack_traces s ON s.hash = e.stack_hash "
        f"WHERE e.stack_hash != 0{where} GROUP BY e.stack_hash, e.source, e.op"
    )
    return db.conn.execute(sql, params).fetchall()


def top_stacks(db: TraceDB, *, op: str | None = None, limit: int = 10) -> list[dict]:
    """The most frequent (call path, op) pairs: op, count, total duration, frames (innermost first).

    Stacks whose frames read the same are one call path: on-CPU samples of one line
    differ in their native return addresses (the interpreter loop), not in what a
    person reads. `stack_hash` is the path's most frequent stack."""
    names = db.op_names()
    paths: dict[tuple, dict] = {}
    for stack_hash, source, op_id, count, total, frames in sorted(_grouped(db, op), key=lambda r: (-r[3], -(r[4] or 0), r[0])):
        labels = [frame_label(f) for f in parse_frames(frames)]
        name = names.get((source, op_id), f"{source}:{op_id}")
        path = paths.setdefault((name, tuple(labels)), {"stack_hash": stack_hash, "op": name, "count": 0, "total_ns": 0, "frames": labels})
        path["count"] += count
        path["total_ns"] += int(total or 0)
    ranked = sorted(paths.values(), key=lambda p: (-p["count"], -p["total_ns"], p["stack_hash"]))
    return ranked[: max(0, limit)]


def folded(db: TraceDB, op: str | None = None) -> str:
    """Flamegraph folded lines `root;...;leaf;op count`, sorted; one line per distinct path."""
    names = db.op_names()
    counts: dict[str, int] = {}
    for _hash, source, op_id, count, _total, frames in _grouped(db, op):
        path = [frame_label(f).replace(";", ":") for f in root_first(parse_frames(frames))]
        path.append(names.get((source, op_id), f"{source}:{op_id}"))
        key = ";".join(p.replace(" ", "_") for p in path)
        counts[key] = counts.get(key, 0) + count
    return "".join(f"{k} {v}\n" for k, v in sorted(counts.items()))
