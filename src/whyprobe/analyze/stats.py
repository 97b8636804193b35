"""Per-op statistics: the one implementation behind `stats`, the live view, Prometheus,
the dashboard and the MCP server.

Quantiles use numpy's default (linear interpolation) and are truncated to integer ns,
i.e. ``int(np.percentile(durations, q))``. Errors follow one rule (`failed`): a CUDA
runtime or driver call failed when it returned non-zero, a syscall or socket call when
it returned a negative errno; other sources carry no error code.

Stored traces (`op_stats`) load four columns (source, op, duration, ret_code), in bulk
through the C helper when it is built; grouping is one numpy sort, so a million events
take about 0.3 s on a small VM. Live traces feed batches to an `OpAccumulator`, which
gives the same numbers while an op has at most `EXACT_CAP` events (then quantiles come
from 2^(1/8)-wide log buckets, within 4.5 %).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np

from whyprobe.analyze.kernels import kernel_labels
from whyprobe.errors import StoreError
from whyprobe.events import Source, op_name
from whyprobe.store import fastsql
from whyprobe.store.kernels import KERNEL_LAUNCH
from whyprobe.store.reader import TraceDB
from whyprobe.syscalls_x86_64 import syscall_name

QUANTILES = {"p50_ns": 50.0, "p95_ns": 95.0, "p99_ns": 99.0, "p999_ns": 99.9}

_NONZERO_IS_ERROR = (int(Source.CUDA), int(Source.DRIVER))
_NEGATIVE_IS_ERROR = (int(Source.SYSCALL), int(Source.NET))


def failed(source: np.ndarray, ret: np.ndarray) -> np.ndarray:
    """Which events are errors: non-zero CUDA/driver codes, negative syscall/socket returns."""
    source = np.asarray(source)
    ret = np.asarray(ret)
    return np.where(np.isin(source, _NONZERO_IS_ERROR), ret != 0, np.isin(source, _NEGATIVE_IS_ERROR) & (ret < 0))


def op_label(source: int, op: int) -> str:
    """The op's name where the trace has none stored: syscalls by name, the rest from events.OPS."""
    return syscall_name(op) if source == Source.SYSCALL else op_name(source, op)


def source_label(source: int) -> str:
    return Source(source).name if source in Source._value2member_map_ else str(source)


Labeller = Callable[[int, int], tuple[str, str]]


def _default_labels(source: int, op: int) -> tuple[str, str]:
    return source_label(source), op_label(source, op)


def _stat(sid: int, oid: int, labels: Labeller, count: int, qs: list[int], max_ns: int, total: int, codes: dict[int, int]) -> dict:
    source, op = labels(sid, oid)
    stat = {"source": source, "op": op, "source_id": sid, "op_id": oid, "count": count}
    stat.update(zip(QUANTILES, qs))
    stat.update(max_ns=max_ns, mean_ns=total // count, total_ns=total, errors=sum(codes.values()), error_codes=codes)
    return stat


def _sorted(out: list[dict]) -> list[dict]:
    out.sort(key=lambda s: (-s["total_ns"], s["source_id"], s["op_id"]))
    return out


def summarize(source: np.ndarray, op: np.ndarray, duration: np.ndarray, ret: np.ndarray, labels: Labeller = _default_labels) -> list[dict]:
    """One dict per (source, op), sorted by total time, descending.

    Keys: source, op (names), source_id, op_id, count, p50_ns, p95_ns, p99_ns,
    p999_ns, max_ns, mean_ns (floor), total_ns, errors, error_codes {code: count}.
    """
    if len(source) == 0:
        return []
    source, op = np.asarray(source, np.int64), np.asarray(op, np.int64)
    key = (source << 32) | (op & 0xFFFFFFFF)  # (source, op) as one sortable int
    order = np.argsort(key, kind="stable")
    key, dur, rets, src = key[order], np.asarray(duration, np.int64)[order], np.asarray(ret, np.int64)[order], source[order]
    bad = failed(src, rets)
    starts = np.concatenate(([0], np.flatnonzero(key[1:] != key[:-1]) + 1))
    ends = np.append(starts[1:], len(key))
    out = []
    for start, end in zip(starts.tolist(), ends.tolist()):
        d = dur[start:end]
        codes, code_counts = np.unique(rets[start:end][bad[start:end]], return_counts=True)
        qs = [int(v) for v in np.percentile(d, list(QUANTILES.values()))]
        out.append(_stat(int(key[start] >> 32), int(key[start] & 0xFFFFFFFF), labels, end - start, qs, int(d.max()), int(d.sum()),
                         {int(c): int(n) for c, n in zip(codes, code_counts)}))
    return _sorted(out)


def _source_id(db: TraceDB, name: str, names: dict[int, str]) -> int:
    wanted = name.strip().lower()
    for sid, sname in names.items():
        if sname.lower() == wanted or str(sid) == wanted:
            return sid
    known = ", ".join(sorted(names.values())) or "none"
    raise StoreError(f"No source named {name!r} in {db.path} (sources: {known})")


def _source_names(db: TraceDB) -> dict[int, str]:
    names = {int(s): str(n) for s, n in db.source_names().items()}
    for s in Source:
        names.setdefault(int(s), s.name)
    return names


def trace_labels(db: TraceDB) -> Labeller:
    """(source, op) → names as the trace stores them, else as whyprobe names them."""
    source_names = _source_names(db)
    op_names = db.op_names()

    def labels(sid: int, oid: int) -> tuple[str, str]:
        return source_names.get(sid, str(sid)), op_names.get((sid, oid)) or op_label(sid, oid)

    return labels


def op_stats(
    db: TraceDB,
    *,
    pid: int | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
    source: str | None = None,
    by_kernel: bool = False,
) -> list[dict]:
    """`summarize` over the stored events matching the filters, named as the trace names them.

    by_kernel: kernel launches only, one dict per (source, op, kernel) with "kernel" =
    the demangled name of the launched function, hex when the trace did not name it.
    """
    labels = trace_labels(db)
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
        params.append(_source_id(db, source, _source_names(db)))
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
    if by_kernel:
        return _by_kernel(db, data, labels)
    return summarize(data[:, 0], data[:, 1], data[:, 2], data[:, 3], labels)


def _by_kernel(db: TraceDB, data: np.ndarray, labels: Labeller) -> list[dict]:
    """`summarize` per kernel: (source, op, pid, arg0) rows grouped by the kernel each launch names."""
    if not len(data):
        return []
    kernels, kernel_of = kernel_labels(db, data[:, 4], data[:, 5])
    out = []
    for i, kernel in enumerate(kernels):
        rows = data[kernel_of == i]
        out += [{**stat, "kernel": kernel} for stat in summarize(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], labels)]
    out.sort(key=lambda s: (-s["total_ns"], s["source_id"], s["op_id"], s["kernel"]))
    return out


BUCKETS_PER_OCTAVE = 8
_NBUCKETS = 64 * BUCKETS_PER_OCTAVE
EXACT_CAP = 1 << 20  # durations kept for exact quantiles, over all ops (8 MiB)


class _Op:
    __slots__ = ("count", "total", "max", "codes", "hist", "exact", "bounded")

    def __init__(self, nbounded: int) -> None:
        self.count = self.total = self.max = 0
        self.codes: dict[int, int] = {}
        self.hist = np.zeros(_NBUCKETS, np.int64)
        self.exact: list[np.ndarray] = []
        self.bounded = np.zeros(nbounded, np.int64)


class OpAccumulator:
    """`summarize` over a stream of event batches, in bounded memory.

    Counts, sums, maxima and errors are exact. Quantiles are exact (every duration kept)
    until the stream passes `exact_cap` events, then read from log buckets. With `bounds`,
    it also counts each op's durations per bucket of those bounds (`le`, as Prometheus
    does: bucket i holds bounds[i-1] < d <= bounds[i], the last one d > bounds[-1])."""

    def __init__(self, bounds: np.ndarray | None = None, exact_cap: int = EXACT_CAP) -> None:
        self.bounds = np.asarray(bounds if bounds is not None else [], np.int64)
        self.exact_cap = exact_cap
        self.exact = True
        self.ops: dict[tuple[int, int], _Op] = {}
        self._kept = 0

    def add(self, source: np.ndarray, op: np.ndarray, duration: np.ndarray, ret: np.ndarray) -> None:
        """A batch as columns (any integer dtypes; u64 durations are reinterpreted, as stored)."""
        if len(source) == 0:
            return
        source, op, ret = np.asarray(source, np.int64), np.asarray(op, np.int64), np.asarray(ret, np.int64)
        duration = np.asarray(duration)
        duration = duration.view(np.int64) if duration.dtype == np.uint64 else duration.astype(np.int64, copy=False)
        # One sort by (source, op); every per-op figure is then a reduction over a slice.
        key = (source << 32) | (op & 0xFFFFFFFF)
        order = np.argsort(key, kind="stable")
        key, duration, ret, source = key[order], duration[order], ret[order], source[order]
        starts = np.concatenate(([0], np.flatnonzero(key[1:] != key[:-1]) + 1))
        ends = np.append(starts[1:], len(key))
        sums = np.add.reduceat(duration, starts).tolist()
        maxs = np.maximum.reduceat(duration, starts).tolist()
        log_bucket = np.minimum((np.log2(np.maximum(duration, 1).astype(np.float64)) * BUCKETS_PER_OCTAVE).astype(np.int64), _NBUCKETS - 1)
        group = np.repeat(np.arange(len(starts)), ends - starts)
        hist = np.bincount(group * _NBUCKETS + log_bucket, minlength=len(starts) * _NBUCKETS).reshape(len(starts), _NBUCKETS)
        if len(self.bounds):
            nb = len(self.bounds) + 1
            le_bucket = np.searchsorted(self.bounds, duration, side="left")
            bounded = np.bincount(group * nb + le_bucket, minlength=len(starts) * nb).reshape(len(starts), nb)
        bad = np.flatnonzero(failed(source, ret))
        self._kept += len(duration)
        if self.exact and self._kept > self.exact_cap:
            self.exact = False  # from here on the log buckets answer
            for st in self.ops.values():
                st.exact = []
        for i, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
            k = int(key[start])
            st = self.ops.get((k >> 32, k & 0xFFFFFFFF))
            if st is None:
                st = self.ops[(k >> 32, k & 0xFFFFFFFF)] = _Op(len(self.bounds) + 1 if len(self.bounds) else 0)
            st.count += end - start
            st.total += sums[i]
            st.max = max(st.max, maxs[i])
            st.hist += hist[i]
            if len(self.bounds):
                st.bounded += bounded[i]
            if self.exact:
                st.exact.append(duration[start:end])
        if len(bad):
            for (i, code), n in zip(*np.unique(np.stack((group[bad], ret[bad]), axis=1), axis=0, return_counts=True)):
                k = int(key[starts[i]])
                codes = self.ops[(k >> 32, k & 0xFFFFFFFF)].codes
                codes[int(code)] = codes.get(int(code), 0) + int(n)

    def counts(self) -> dict[tuple[int, int], int]:
        return {k: st.count for k, st in self.ops.items()}

    def stats(self, labels: Labeller = _default_labels, *, exact: bool = True) -> list[dict]:
        """What `summarize` says of everything added so far. exact=False reads quantiles from
        the log buckets even when every duration is kept (cheap: for a view redrawn often)."""
        out = []
        for (sid, oid), st in self.ops.items():
            if exact and self.exact:
                d = np.concatenate(st.exact)
                st.exact = [d]
                qs = [int(v) for v in np.percentile(d, list(QUANTILES.values()))]
            else:
                qs = [min(int(_hist_quantile(st.hist, q / 100)), st.max) for q in QUANTILES.values()]
            out.append(_stat(sid, oid, labels, st.count, qs, st.max, st.total, dict(sorted(st.codes.items()))))
        return _sorted(out)


def _hist_quantile(h: np.ndarray, q: float) -> float:
    total = int(h.sum())
    if total == 0:
        return 0.0
    i = int(np.searchsorted(np.cumsum(h), math.ceil(q * total)))
    return 2 ** ((i + 0.5) / BUCKETS_PER_OCTAVE)
