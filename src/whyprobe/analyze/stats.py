"""Per-op latency statistics: exact quantiles over every stored duration.

Quantiles use numpy's default (linear interpolation) and are truncated to
integer ns, i.e. ``int(np.percentile(durations, q))``. Only four columns are
loaded (source, op, duration, ret_code), in bulk through the C helper when it is
built; grouping is one numpy sort, so a million events take about 0.3 s on a small VM.
"""

from __future__ import annotations

import itertools

import numpy as np

from whyprobe.analyze.kernels import kernel_labels
from whyprobe.errors import StoreError
from whyprobe.events import Source, op_name
from whyprobe.store import fastsql
from whyprobe.store.kernels import KERNEL_LAUNCH
from whyprobe.store.reader import TraceDB

QUANTILES = {"p50_ns": 50.0, "p95_ns": 95.0, "p99_ns": 99.0, "p999_ns": 99.9}

# Sources whose ret_code is an error code (0 = success) and the syscall source (ret < 0 = -errno).
_NONZERO_IS_ERROR = (int(Source.CUDA), int(Source.DRIVER))
_NEGATIVE_IS_ERROR = (int(Source.SYSCALL),)


def _source_id(db: TraceDB, name: str, names: dict[int, str]) -> int:
    wanted = name.strip().lower()
    for sid, sname in names.items():
        if sname.lower() == wanted or str(sid) == wanted:
            return sid
    known = ", ".join(sorted(names.values())) or "none"
    raise StoreError(f"No source named {name!r} in {db.path} (sources: {known})")


def op_stats(
    db: TraceDB,
    *,
    pid: int | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
    source: str | None = None,
    by_kernel: bool = False,
) -> list[dict]:
    """One dict per (source, op), sorted by total time, descending.

    Keys: source, op (names), source_id, op_id, count, p50_ns, p95_ns, p99_ns,
    p999_ns, max_ns, mean_ns (floor), total_ns, errors, error_codes {code: count}.
    by_kernel: kernel launches only, one dict per (source, op, kernel) with
    "kernel" = the demangled name of the launched function, hex when unresolved.
    """
    source_names = {int(s): str(n) for s, n in db.source_names().items()}
    for s in Source:
        source_names.setdefault(int(s), s.name)
    op_names = db.op_names()
    where, params = [], []
    if pid is not None:
        where.append("pid = ?")
        params.append(pid)
    if since_ns is not None:
        where.append("timestamp >= ?")
        params.append(since_ns)
    if until_ns is not None:
        where.append("timestamp <= ?")
        params.append(until_ns)
    if source is not None:
        where.append("source = ?")
        params.append(_source_id(db, source, source_names))
    ret = "COALESCE(ret_code, 0)" if db.has("events", "ret_code") else "0"
    cols = f"source, op, COALESCE(duration, 0), {ret}"
    if by_kernel:
        cols += ", pid, COALESCE(arg0, 0)"
        where.append("(" + " OR ".join(f"(source = {s} AND op = {o})" for s, o in sorted(KERNEL_LAUNCH)) + ")")
    sql = f"SELECT {cols} FROM events"
    if where:
        sql += " WHERE " + " AND ".join(where)
    width = 6 if by_kernel else 4
    data = fastsql.select_i64(db.conn, sql, params, width, copy=False)
    if data is None:
        # fromiter over the flattened cursor: no list of a million tuples in between.
        data = np.fromiter(itertools.chain.from_iterable(db.conn.execute(sql, params)), dtype=np.int64).reshape(-1, width)
    if len(data) == 0:
        return []
    key = (data[:, 0] << 32) | (data[:, 1] & 0xFFFFFFFF)  # (source, op) as one sortable int
    labels: list[str] = []
    if by_kernel:
        # (source, op, kernel label) as one int: kernels are named per (pid, handle).
        labels, label_id = kernel_labels(db, data[:, 4], data[:, 5])
        key = key * len(labels) + label_id
    order = np.argsort(key, kind="stable")
    data, key = data[order], key[order]
    starts = np.concatenate(([0], np.flatnonzero(key[1:] != key[:-1]) + 1))
    ends = np.append(starts[1:], len(data))
    out = []
    for start, end in zip(starts.tolist(), ends.tolist()):
        sid, oid = int(data[start, 0]), int(data[start, 1])
        dur = data[start:end, 2]
        rets = data[start:end, 3]
        if sid in _NONZERO_IS_ERROR:
            failed = rets[rets != 0]
        elif sid in _NEGATIVE_IS_ERROR:
            failed = rets[rets < 0]
        else:
            failed = rets[:0]
        codes, code_counts = np.unique(failed, return_counts=True)
        total = int(dur.sum())
        qs = np.percentile(dur, list(QUANTILES.values()))
        stat = {
            "source": source_names.get(sid, str(sid)),
            "op": op_names.get((sid, oid)) or op_name(sid, oid),
            "source_id": sid,
            "op_id": oid,
            "count": end - start,
        }
        if by_kernel:
            stat["kernel"] = labels[int(key[start] % len(labels))]
        stat.update({k: int(v) for k, v in zip(QUANTILES, qs)})
        stat.update(
            max_ns=int(dur.max()),
            mean_ns=total // (end - start),
            total_ns=total,
            errors=int(len(failed)),
            error_codes={int(c): int(n) for c, n in zip(codes, code_counts)},
        )
        out.append(stat)
    out.sort(key=lambda s: (-s["total_ns"], s["source_id"], s["op_id"], s.get("kernel", "")))
    return out
