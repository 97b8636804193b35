"""Ring records → stored event rows, and the per-minute aggregates kept beside them.

Both run on every drained batch (the session converts, the writer aggregates),
so both work on whole numpy columns, never a row at a time.
"""

from __future__ import annotations

import numpy as np

from whyprobe.events import EVENT_ROW_DTYPE

NS_PER_MINUTE = 60_000_000_000
_INT64_MAX = np.iinfo(np.int64).max
# rows_from_records converts this many records at a time: field by field over a
# whole drained ring (up to ~40 MB of rows) misses the cache on every one of its
# 15 passes; chunks that stay in L2 take ~45 instead of ~170 ns a row alone,
# ~200 instead of ~340 ns inside a busy trace (bench/ingest.py).
_ROWS_CHUNK = 8192

AGGREGATE_UPSERT = """
INSERT INTO event_aggregates(bucket, source, op, pid, node, count, stored, sum_dur, min_dur, max_dur, sum_arg0)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(bucket, source, op, pid, node) DO UPDATE SET
    count = count + excluded.count,
    stored = stored + excluded.stored,
    sum_dur = sum_dur + excluded.sum_dur,
    min_dur = min(min_dur, excluded.min_dur),
    max_dur = max(max_dur, excluded.max_dur),
    sum_arg0 = sum_arg0 + excluded.sum_arg0
"""



def rows_from_records(records: np.ndarray, clock_offset_ns: int) -> np.ndarray:
    """Ring records (`EVENT_DTYPE`, CLOCK_MONOTONIC ns) → EVENT_ROW_DTYPE rows (unix ns).

    u64 fields are reinterpreted bit for bit as int64 (SQLite integers are
    signed); `id` is 0 (SQLite assigns it) and `stack_hash` 0 for the session to fill.
    """
    out = np.empty(len(records), EVENT_ROW_DTYPE)
    for i in range(0, len(records), _ROWS_CHUNK):
        _fill_rows(out[i : i + _ROWS_CHUNK], records[i : i + _ROWS_CHUNK], clock_offset_ns)
    return out


def _fill_rows(out: np.ndarray, records: np.ndarray, clock_offset_ns: int) -> None:
    out["timestamp"] = records["ts_ns"].view(np.int64) + np.int64(clock_offset_ns)
    out["duration"] = records["duration_ns"].view(np.int64)
    for name in ("arg0", "arg1", "arg2", "aux", "cgroup_id"):
        out[name] = records[name].view(np.int64)
    out["ret_code"] = records["ret"]
    for name in ("pid", "tid", "cpu", "source", "op", "flags"):
        out[name] = records[name]
    out["id"] = 0
    out["stack_hash"] = 0


def aggregate_rows(rows: np.ndarray, node: str = "") -> list[tuple]:
    """Per (minute bucket, source, op, pid) count/stored/sum/min/max duration and sum of arg0."""
    if len(rows) == 0:
        return []
    bucket = rows["timestamp"] // NS_PER_MINUTE * NS_PER_MINUTE
    # One sortable key: source (<2^8), op (<2^16) and pid (<2^32) pack into 56 bits;
    # the bucket is sorted first, separately, since a batch rarely spans two minutes.
    key = (rows["source"] << 48) | (rows["op"] << 32) | (rows["pid"] & 0xFFFFFFFF)
    one_bucket = bool(np.all(bucket == bucket[0]))
    order = np.argsort(key, kind="stable") if one_bucket else np.lexsort((key, bucket))
    kb, kk = bucket[order], key[order]
    starts = np.concatenate(([0], np.flatnonzero((kk[1:] != kk[:-1]) | (kb[1:] != kb[:-1])) + 1))
    counts = np.diff(np.append(starts, len(rows)))
    first = order[starts]
    dur = rows["duration"][order]
    arg0 = rows["arg0"][order]
    sum_arg0 = np.add.reduceat(arg0, starts)
    # arg0 is a pointer for some ops: saturate instead of wrapping around.
    approx = np.add.reduceat(arg0.astype(np.float64), starts)
    over = np.abs(approx) >= 9.0e18
    sum_arg0[over] = np.where(approx[over] > 0, _INT64_MAX, -_INT64_MAX)
    cols = np.stack(
        [
            kb[starts],
            rows["source"][first],
            rows["op"][first],
            rows["pid"][first],
            counts,
            counts,
            np.add.reduceat(dur, starts),
            np.minimum.reduceat(dur, starts),
            np.maximum.reduceat(dur, starts),
            sum_arg0,
        ],
        axis=1,
    )
    return [(b, s, o, p, node, *rest) for b, s, o, p, *rest in cols.tolist()]
