"""Explain on the real Ingero capture of a starved PyTorch dataloader: what its evidence supports."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from whyprobe.analyze.explain import explain
from whyprobe.store.reader import open_trace

DB = Path(__file__).resolve().parents[3] / "shared" / "data" / "pytorch-dataloader-starvation.db"
TRAINING_TID = 2233


@pytest.fixture(scope="module")
def doc() -> dict:
    with open_trace(DB) as db:
        return explain(db)


@pytest.fixture(scope="module")
def raw() -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{DB}?mode=ro", uri=True)
    yield conn
    conn.close()


def test_the_trace_is_what_the_design_says(raw):
    # 115 CUDA calls (runtime + driver) over a 77 s window, in bursts 5-12 s apart, all on the training thread
    calls = np.array(raw.execute("SELECT timestamp, duration, tid FROM events WHERE source IN (1, 4) ORDER BY timestamp").fetchall())
    assert len(calls) == 115 and set(calls[:, 2]) == {TRAINING_TID}
    first, last = raw.execute("SELECT MIN(timestamp), MAX(timestamp + duration) FROM events").fetchone()
    assert 76.9e9 < last - first < 77.0e9
    gaps = np.diff(calls[:, 0]) / 1e9
    big = gaps[gaps > 1.0]
    assert len(big) == 7 and 5.0 < big.min() and big.max() < 12.5
    # the training thread is off-CPU only ~1.5 s in total
    off = raw.execute("SELECT SUM(duration) FROM events WHERE source = 3 AND op = 1 AND tid = ?", (TRAINING_TID,)).fetchone()[0]
    assert 1.45e9 < off < 1.50e9
    # and its slowest CUDA calls overlap none of the recorded off-CPU intervals
    offcpu = np.array(raw.execute("SELECT timestamp, timestamp + duration FROM events WHERE source = 3 AND op = 1 AND tid = ?", (TRAINING_TID,)).fetchall())
    for ts, dur, _ in calls[np.argsort(-calls[:, 1])[:10]]:
        assert not np.any((offcpu[:, 0] < ts + dur) & (offcpu[:, 1] > ts))


def test_dominant_finding_is_gpu_starvation_by_on_cpu_work(doc):
    top = doc["findings"][0]
    assert (top["kind"], top["tid"], top["dominant_cause"], top["severity"]) == ("gap", TRAINING_TID, "on_cpu", "high")
    assert top["slow_calls"] >= 7 and top["lost_ns"] > 45e9
    on_cpu = next(c for c in top["causes"] if c["kind"] == "on_cpu")
    assert on_cpu["explained_ns"] > 0.95 * top["lost_ns"]
    assert on_cpu["blockers"][0]["tid"] == TRAINING_TID and on_cpu["blockers"][0]["comm"] == "python3"
    assert "busy on-CPU between steps" in top["summary"]
    assert any("DataLoader workers" in r for r in top["recommendations"])


def test_no_tail_is_blamed_on_sched_switch(doc):
    # Ingero's stored chains say "cudaLaunchKernel tail caused by sched_switch"; the evidence does not
    for f in doc["findings"]:
        if f["kind"] == "tail":
            off = sum(c["explained_ns"] for c in f["causes"] if c["kind"] == "off_cpu")
            assert off == 0, f["id"]


def test_findings_are_deduplicated(doc, raw):
    assert raw.execute("SELECT COUNT(*) FROM causal_chains").fetchone()[0] == 316
    identities = [(f["kind"], f["op"], f["tid"], f["dominant_cause"]) for f in doc["findings"]]
    assert len(identities) == len(set(identities))
    assert 1 <= len(doc["findings"]) <= 6
    assert len({f["id"] for f in doc["findings"]}) == len(doc["findings"])


def test_quantiles_match_numpy_exactly(doc, raw):
    names = {n: (s, o) for s, o, n in raw.execute("SELECT source_id, op_id, name FROM ops")}
    tails = [f for f in doc["findings"] if f["kind"] == "tail"]
    assert tails
    for f in tails:
        s, o = names[f["op"]]
        d = np.array([r[0] for r in raw.execute("SELECT duration FROM events WHERE source = ? AND op = ?", (s, o))])
        assert f["count"] == len(d)
        assert (f["p50_ns"], f["p99_ns"], f["p999_ns"]) == tuple(int(np.percentile(d, q)) for q in (50, 99, 99.9))


def test_degradation_and_incompleteness_are_said(doc):
    assert doc["flavor"] == "ingero" and doc["complete"] is False and doc["not_stored_events"] > 0
    assert any("no preemptor, waker" in n for n in doc["notes"])
    gap = doc["findings"][0]
    assert any("counted but not stored" in n for n in gap["notes"])


def test_contract_keys(doc):
    assert {"database", "window", "complete", "dropped_events", "findings"} <= set(doc)
    assert set(doc["window"]) == {"start_ns", "end_ns"}
    keys = {"id", "kind", "severity", "op", "tid", "lost_ns", "source", "count", "p50_ns", "p99_ns", "p999_ns",
            "tail_ratio", "slow_calls", "causes", "summary", "recommendations"}
    for f in doc["findings"]:
        assert keys <= set(f)
        assert f["kind"] in ("tail", "gap") and f["severity"] in ("high", "medium", "low")
        for c in f["causes"]:
            assert {"kind", "slow_calls", "explained_ns", "blockers"} <= set(c)
            assert c["kind"] in ("off_cpu", "on_cpu", "io", "network", "sync_wait", "cold_start", "syscall", "unknown")
            for b in c["blockers"]:
                assert {"pid", "tid", "comm", "ns"} <= set(b)
