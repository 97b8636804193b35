"""The fast read paths give exactly what the plain ones give: column-wise explain, bulk stats/stacks/launch reads, the tool cache."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from explain_synth import MS, US, blocked, ev, hog_scenario, launch_loop, write_db

from whyprobe.analyze import explain as E
from whyprobe.analyze import window as W
from whyprobe.analyze.findings import TAIL_SOURCES
from whyprobe.analyze.offcpu import SCHED_SWITCH
from whyprobe.analyze.stacks import folded, top_stacks
from whyprobe.analyze.stats import op_stats
from whyprobe.events import Source
from whyprobe.server import tools as T
from whyprobe.server.security import SecuritySettings
from whyprobe.store import fastsql, schema
from whyprobe.events import EVENT_ROW_DTYPE
from whyprobe.store.reader import EventColumns, open_trace

needs_helper = pytest.mark.skipif(fastsql._lib is None, reason="C helper not built (make builds it)")


def _records(n: int = 50) -> np.ndarray:
    rng = np.random.default_rng(3)
    rec = np.zeros(n, EVENT_ROW_DTYPE)
    for name in EVENT_ROW_DTYPE.names:
        rec[name] = rng.integers(-5, 1000, n)
    return rec


def test_event_columns_select_like_the_record_array():
    rec = _records()
    cols = EventColumns({name: rec[name].copy() for name in ("timestamp", "tid", "source")}, len(rec))
    mask = rec["tid"] > 300
    order = np.argsort(rec["timestamp"][mask], kind="stable")
    for got, want in ((cols[mask], rec[mask]), (cols[mask][order], rec[mask][order]), (cols[[3, 1, 3]], rec[[3, 1, 3]])):
        assert len(got) == len(want)
        assert got["timestamp"].tolist() == want["timestamp"].tolist()
        assert got["tid"].tolist() == want["tid"].tolist()
    # Columns that were not loaded read as the loader's neutral defaults.
    assert cols[mask]["cpu"].tolist() == [-1] * int(mask.sum())
    assert cols["arg0"].tolist() == [0] * len(rec)
    assert cols[mask].compact()["source"].tolist() == rec["source"][mask].tolist()
    with pytest.raises(IndexError):
        cols[np.ones(3, bool)]
    with pytest.raises(KeyError):
        cols["nope"]


def _record_load(db, start: int, end: int, whole: bool, degraded: bool = False) -> np.ndarray:
    """explain's loader as it was: every column into one record array (load_events), masked once."""
    if whole:
        span, args = "", ()
    else:
        margin = E._scalar(db, "SELECT MAX(duration) FROM events") or 0
        span, args = " AND timestamp >= ? AND timestamp < ?", (start - margin, end)
    sources = (*TAIL_SOURCES, SCHED_SWITCH[0], *E.HOST_SOURCES)
    rows = db.load_events(f"+source IN ({', '.join('?' * len(sources))}){span}", (*sources, *args))
    source, tid = rows["source"], rows["tid"]
    is_call = np.isin(source, TAIL_SOURCES)
    mine = np.isin(tid, np.unique(tid[is_call]))
    sched = (source == SCHED_SWITCH[0]) & (rows["op"] == SCHED_SWITCH[1]) & mine
    by_pid = (source == int(Source.IO)) | (source == int(Source.TCP))
    by_tid = (source == int(Source.NET)) | (source == int(Source.SYSCALL))
    host = (by_pid & np.isin(rows["pid"], np.unique(rows["pid"][is_call]))) | (by_tid & mine)
    return rows[is_call | sched | host]


def _both(path: Path, **kw) -> tuple[str, str]:
    def run() -> str:
        with open_trace(path) as db:
            return json.dumps(E.explain(db, **kw), sort_keys=True)

    fast = run()
    with mock.patch.object(E, "_load", _record_load):
        plain = run()
    return fast, plain


def test_explain_on_columns_equals_explain_on_records(tmp_path, shared_data):
    calls, spans = launch_loop(120, slow={i: 6 * MS for i in (20, 50, 80)})
    io = [ev(s + 100 * US, 5 * MS, source=int(Source.IO), op=1, arg0=1 << 20) for s, _ in spans]
    sysc = [ev(s + 50 * US, 2 * MS, source=int(Source.SYSCALL), op=0) for s, _ in spans]
    waits = [blocked(s + 100 * US, 5 * MS, waker=77, waker_pid=70) for s, _ in spans]
    synth = write_db(tmp_path / "mixed.db", hog_scenario() + calls + io + sysc + waits)
    ingero = shared_data / "pytorch-dataloader-starvation.db"
    for path in (synth, ingero):
        with open_trace(path) as db:
            mid = (E._scalar(db, "SELECT MIN(timestamp) FROM events") + E._scalar(db, "SELECT MAX(timestamp) FROM events")) // 2
        for kw in ({}, {"since_ns": mid}, {"until_ns": mid}, {"min_severity": "high"}):
            fast, plain = _both(path, **kw)
            assert fast == plain, (path.name, kw)
    # The comparison is not vacuous: the synthetic trace has a tail explained by several causes.
    top = json.loads(_both(synth)[0])["findings"][0]
    assert top["kind"] == "tail" and len([c for c in top["causes"] if c["kind"] != "unknown"]) >= 2


def _stats_db(path: Path) -> Path:
    rng = np.random.default_rng(11)
    n = 4000
    conn = sqlite3.connect(path)
    schema.create(conn)
    kind = rng.integers(0, 4, n)
    src_op = np.array([[1, 3], [4, 1], [8, 0], [3, 1]])[kind]
    dur = rng.integers(1, 60, n) * 1000  # many equal durations: order-sensitive ties
    ret = np.where(rng.random(n) < 0.05, rng.integers(-3, 4, n), 0)
    stack = np.where(kind < 2, rng.integers(0, 7, n), 0)
    rows = np.column_stack([np.arange(n) * 1000 + 10**18, rng.choice([10, 20], n), rng.integers(10, 14, n), src_op, dur, ret, stack])
    with conn:
        conn.executemany("INSERT INTO events(timestamp, pid, tid, source, op, duration, ret_code, stack_hash) VALUES (?,?,?,?,?,?,?,?)", rows.tolist())
        conn.executemany("INSERT INTO stack_traces(hash, ips, frames) VALUES (?, '[]', ?)",
                         [(h, json.dumps([{"s": f"f{h}", "f": "a.py", "l": h}])) for h in range(1, 6)])  # hash 6 has no frames
    conn.close()
    return path


def _engine_outputs(path: Path) -> str:
    out = {}
    with open_trace(path) as db:
        out["stats"] = op_stats(db)
        out["stats_pid"] = op_stats(db, pid=10, source="cuda")
        out["stacks"] = top_stacks(db, limit=100)
        out["stacks_op"] = top_stacks(db, op="cuLaunchKernel", limit=3)
        out["folded"] = folded(db)
    state = T.ServerState(path, SecuritySettings())
    for op, tid in ((None, None), ("cuLaunchKernel", 12)):
        try:
            out[f"launch {op} {tid}"] = T.analyze_gpu_launch_latency_tool(state, op=op, pid=None, tid=tid, outliers=25).data
        except T.ToolError as exc:
            out[f"launch {op} {tid}"] = str(exc)
    return json.dumps(out, sort_keys=True)


@needs_helper
def test_bulk_reads_equal_the_plain_sql_paths(tmp_path, shared_data):
    fast = {}
    for path in (_stats_db(tmp_path / "s.db"), shared_data / "pytorch-dataloader-starvation.db"):
        fast[path.name] = _engine_outputs(path)
        with mock.patch.object(fastsql, "select_i64", lambda *a, **k: None):
            plain = _engine_outputs(path)
        assert fast[path.name] == plain, path.name
    got = json.loads(fast["s.db"])
    assert len(got["stats"]) == 4 and got["stats"][0]["errors"] > 0
    assert {s["stack_hash"] for s in got["stacks"]} == {1, 2, 3, 4, 5}  # hash 6 has no stack_traces row
    assert got["launch None None"]["count"] > 0 and got["launch cuLaunchKernel 12"]["count"] > 0


def test_tool_cache_ignores_an_empty_wal_and_computes_once(tmp_path):
    path = _stats_db(tmp_path / "c.db")
    state = T.ServerState(path, SecuritySettings())
    runs = []

    def slow():
        runs.append(1)
        time.sleep(0.2)
        return len(runs)

    threads = [threading.Thread(target=state.cached, args=(("k",), slow)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runs == [1]
    Path(f"{path}-wal").write_bytes(b"")  # what the first reader of a WAL-mode trace leaves
    assert state.cached(("k",), slow) == 1 and runs == [1]
    Path(f"{path}-wal").write_bytes(b"x" * 32)  # a WAL with content may change the trace
    assert state.cached(("k",), slow) == 2


def test_max_duration_by_index_seeks_equals_the_grouped_scan(tmp_path, shared_data):
    path = _stats_db(tmp_path / "m.db")
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO events(timestamp, pid, tid, source, op, duration) VALUES (1, 10, 10, 9, 77, 987654321)")
    conn.close()
    grouped = "SELECT COALESCE(MAX(m), 0) FROM (SELECT MAX(duration) AS m FROM events GROUP BY source, op)"
    db = T.ServerState(path, SecuritySettings()).trace()
    assert W._has_duration_index(db)
    assert W._max_duration_by_seeks(db) == W.max_duration(db) == db.conn.execute(grouped).fetchone()[0] == 987654321
    filtered = T.ServerState(path, SecuritySettings(pid_filter=[20])).trace()
    assert W._max_duration_by_seeks(filtered) == filtered.conn.execute(grouped).fetchone()[0] < 987654321
    assert not W._has_duration_index(T.ServerState(shared_data / "sample-gpu-node-01.db", SecuritySettings()).trace())
