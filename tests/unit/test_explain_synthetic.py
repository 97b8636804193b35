"""Explain on synthetic traces whose cause is known: preemption, block I/O, GPU sync, a clean run."""

from __future__ import annotations

import numpy as np
import pytest
from explain_synth import (
    ENGINE_PID,
    ENGINE_TID,
    HOG_PID,
    HOG_TID,
    MS,
    T0,
    US,
    blocked,
    ev,
    hog_scenario,
    launch_loop,
    write_db,
)

from whyprobe.analyze.engine import Names
from whyprobe.analyze.explain import LiveExplainer, explain
from whyprobe.events import Source
from whyprobe.events import EVENT_ROW_DTYPE
from whyprobe.store.reader import open_trace


def _explain(tmp_path, events, **kw) -> dict:
    path = tmp_path / f"t{len(list(tmp_path.glob('*.db')))}.db"
    with open_trace(write_db(path, events)) as db:
        return explain(db, **kw)


def _cause(f: dict, kind: str) -> dict:
    return next(c for c in f["causes"] if c["kind"] == kind)


def test_preempting_hog_is_the_top_cause_with_a_cpuset_fix(tmp_path):
    # GIVEN 10 of 200 launches on `engine` preempted for 8.5 ms each by `hog` on CPU 3
    doc = _explain(tmp_path, hog_scenario())
    # THEN the top finding is that tail, explained by off-CPU time, blocked by hog on CPU 3
    top = doc["findings"][0]
    assert (top["kind"], top["op"], top["tid"], top["dominant_cause"]) == ("tail", "cudaLaunchKernel", ENGINE_TID, "off_cpu")
    assert top["slow_calls"] == 10 and top["severity"] == "high"
    off = _cause(top, "off_cpu")
    assert off["slow_calls"] == 10
    assert off["explained_ns"] == 10 * 8_500 * US  # the whole preempted stretch lies within each call's excess
    assert off["blockers"][0] == {"pid": HOG_PID, "tid": HOG_TID, "comm": "hog", "ns": 10 * 8_500 * US, "cpu": 3}
    fix = " ".join(top["recommendations"])
    assert "cpuset" in fix and "CPU 3" in fix and f"tid {ENGINE_TID}" in fix and "`hog`" in fix and str(HOG_PID) in fix
    assert "hog" in top["summary"] and "CPU 3" in top["summary"]


def test_block_io_during_slow_calls_is_io(tmp_path):
    # GIVEN slow launches during which the engine thread's own block reads are in flight (and it is blocked)
    calls, spans = launch_loop(100, slow={i: 6 * MS for i in (20, 50, 80)})
    io = [ev(s + 100 * US, 5 * MS, source=int(Source.IO), op=1, arg0=1 << 20) for s, _ in spans]
    waits = [blocked(s + 100 * US, 5 * MS) for s, _ in spans]
    doc = _explain(tmp_path, calls + io + waits)
    top = doc["findings"][0]
    assert (top["op"], top["dominant_cause"]) == ("cudaLaunchKernel", "io")
    io_cause = _cause(top, "io")
    assert io_cause["slow_calls"] == 3 and io_cause["explained_ns"] == 3 * 5 * MS
    assert io_cause["blockers"][0]["tid"] == ENGINE_TID
    assert all(c["kind"] != "off_cpu" for c in top["causes"])  # the blocked time is the I/O, not counted twice
    assert "I/O off" in " ".join(top["recommendations"])


def test_sync_after_launches_waits_on_the_gpu_not_the_host(tmp_path):
    # GIVEN 20 steps of 50 launches then cudaDeviceSynchronize; 5 syncs take 20 ms while the thread sleeps
    events, ts, slow_syncs = [], T0, []
    for step in range(20):
        for _ in range(50):
            events.append(ev(ts, 10 * US, arg2=7))
            ts += 20 * US
        d = 20 * MS if step % 4 == 0 else 30 * US
        events.append(ev(ts, d, op=6))
        if d > MS:
            slow_syncs.append(ts)
            events.append(blocked(ts + 50 * US, d - 100 * US))
        ts += d + 100 * US
    doc = _explain(tmp_path, events)
    sync = next(f for f in doc["findings"] if f["op"] == "cudaDeviceSynchronize")
    assert sync["dominant_cause"] == "sync_wait" and sync["slow_calls"] == 5
    assert [c["kind"] for c in sync["causes"]] == ["sync_wait"]
    assert _cause(sync, "sync_wait")["blockers"][0]["tid"] == ENGINE_TID
    assert "not the host" in " ".join(sync["recommendations"])


def test_clean_uniform_run_has_no_high_severity_finding(tmp_path):
    rng = np.random.default_rng(3)
    events, ts = [], T0
    for _ in range(2000):
        d = int(rng.integers(40 * US, 60 * US))
        events.append(ev(ts, d))
        ts += d + 200 * US
        if rng.random() < 0.1:
            events.append(blocked(ts - 150 * US, 100 * US))
    doc = _explain(tmp_path, events)
    assert [f for f in doc["findings"] if f["severity"] == "high"] == []
    assert doc["complete"] is True and doc["dropped_events"] == 0


def test_live_explainer_reaches_the_batch_answer_incrementally(tmp_path):
    # GIVEN the hog scenario fed in 10 batches, as `trace --explain` would
    with open_trace(write_db(tmp_path / "t.db", hog_scenario())) as db:
        rows = db.load_events()
        names = Names(threads={t: (p, c) for t, p, c in db.conn.execute("SELECT tid, pid, comm FROM thread_names")})
    live = LiveExplainer(names=names, horizon_ns=50 * MS, settle_ns=5 * MS)
    for chunk in np.array_split(rows, 10):
        live.feed(chunk)
        # THEN the sliding buffer stays bounded by the horizon (plus what pending targets still need)
        span = live._buffer["timestamp"].max() - live._buffer["timestamp"].min()
        assert span < 80 * MS
    top = live.findings()[0]
    assert (top["kind"], top["op"], top["tid"], top["dominant_cause"]) == ("tail", "cudaLaunchKernel", ENGINE_TID, "off_cpu")
    assert top["causes"][0]["blockers"][0]["comm"] == "hog"
    assert top["slow_calls"] == 10


def test_live_explainer_accepts_empty_and_unsorted_batches():
    live = LiveExplainer()
    live.feed(np.zeros(0, EVENT_ROW_DTYPE))
    assert live.findings() == []


@pytest.mark.parametrize("severity", ["medium", "high"])
def test_min_severity_filters(tmp_path, severity):
    doc = _explain(tmp_path, hog_scenario(), min_severity=severity)
    order = {"high": 0, "medium": 1, "low": 2}
    assert all(order[f["severity"]] <= order[severity] for f in doc["findings"])
    assert doc["findings"], "the hog tail is high severity and must survive the filter"


def test_pid_and_op_filters(tmp_path):
    assert _explain(tmp_path, hog_scenario(), pid=ENGINE_PID + 999)["findings"] == []
    doc = _explain(tmp_path, hog_scenario(), op="cudaMemcpy")
    assert doc["findings"] == []
