"""Property tests: attribution never invents time, ignores input order, and names only real blockers."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
from explain_synth import ENGINE_PID, ENGINE_TID, MS, T0, US, blocked, ev, preempted, write_db
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from whyprobe.analyze import engine
from whyprobe.analyze.evidence import KINDS, Layer, Targets, attribute, excess_only
from whyprobe.analyze.explain import explain
from whyprobe.events import Source
from whyprobe.store.reader import open_trace

HOGS = {201: (200, "hog"), 202: (200, "hog2"), 301: (300, "worker")}
THREADS = {ENGINE_TID: (ENGINE_PID, "engine"), 102: (ENGINE_PID, "loader"), **HOGS}


@st.composite
def traces(draw) -> list[dict]:
    """One engine thread's calls (some slow) plus its off-CPU intervals and block I/O, at random."""
    events, ts, span = [], T0, []
    for _ in range(draw(st.integers(12, 50))):
        d = draw(st.one_of(st.integers(20 * US, 80 * US), st.integers(1 * MS, 12 * MS)))
        op = draw(st.sampled_from([3, 3, 3, 6, 7]))
        events.append(ev(ts, d, op=op, arg0=draw(st.integers(1, 3)), arg2=7))
        ts += d + draw(st.integers(10 * US, 3 * MS))
    span = ts - T0
    # non-overlapping off-CPU intervals of the engine thread
    cuts = sorted(draw(st.lists(st.integers(0, span), min_size=0, max_size=30, unique=True)))
    for a, b in zip(cuts[::2], cuts[1::2]):
        if draw(st.booleans()):
            events.append(preempted(T0 + a, b - a, by=draw(st.sampled_from([201, 202])), cpu=draw(st.integers(0, 3))))
        else:
            events.append(blocked(T0 + a, b - a, waker=draw(st.sampled_from([0, 301])), waker_pid=300))
    for _ in range(draw(st.integers(0, 6))):
        start = T0 + draw(st.integers(0, span))
        events.append(ev(start, draw(st.integers(100 * US, 8 * MS)), source=int(Source.IO), op=1, tid=draw(st.sampled_from([ENGINE_TID, 102]))))
    return events


def _explain(events: list[dict]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        with open_trace(write_db(Path(tmp) / "p.db", events, THREADS)) as db:
            doc = explain(db)
    doc.pop("database")
    return doc


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces())
def test_explained_time_never_exceeds_what_was_lost(events):
    doc = _explain(events)
    for f in doc["findings"]:
        assert sum(c["explained_ns"] for c in f["causes"]) == f["lost_ns"]
        for c in f["causes"]:
            assert 0 < c["explained_ns"] <= f["lost_ns"]
            assert c["slow_calls"] <= f["slow_calls"]
            assert sum(b["ns"] for b in c["blockers"]) <= c["explained_ns"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces(), st.randoms(use_true_random=False))
def test_attribution_ignores_input_order(events, rnd: random.Random):
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert _explain(shuffled) == _explain(events)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces())
def test_no_finding_without_evidence(events):
    doc = _explain(events)
    in_data = {e[k] for e in events for k in ("tid", "arg1", "aux")} | set(THREADS)
    for f in doc["findings"]:
        for c in f["causes"]:
            if c["kind"] == "unknown":
                assert c["blockers"] == []
                continue
            assert c["explained_ns"] > 0
            for b in c["blockers"]:
                assert b["tid"] in in_data and b["ns"] > 0
                assert b["comm"] == THREADS[b["tid"]][1] and b["pid"] == THREADS[b["tid"]][0]
            if c["kind"] == "off_cpu":
                assert any(e["source"] == 3 for e in events)
            if c["kind"] == "io":
                assert any(e["source"] == int(Source.IO) for e in events)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 5_000)), min_size=1, max_size=20),
    st.lists(st.tuples(st.sampled_from(["off_cpu", "io", "on_cpu"]), st.integers(0, 12_000), st.integers(1, 6_000)), max_size=40),
    st.integers(0, 3_000),
)
def test_per_call_attribution_is_bounded_by_duration_and_excess(calls, evidence, baseline):
    # GIVEN targets on one thread and overlapping evidence of several kinds (in priority order)
    t = Targets(np.full(len(calls), 1), np.full(len(calls), 1), np.array([c[0] for c in calls]), np.array([c[0] + c[1] for c in calls]))
    layers = []
    for kind in ("off_cpu", "io", "on_cpu"):
        mine = [e for e in evidence if e[0] == kind]
        s = np.array([e[1] for e in mine], np.int64)
        layers.append(Layer(kind, np.ones(len(mine)), s, s + np.array([e[2] for e in mine], np.int64), np.full(len(mine), 9), np.full(len(mine), 9), np.full(len(mine), -1)))
    att = attribute(t, layers)
    dur = t.end - t.start
    # THEN every call's time is split exactly, with nothing negative
    assert (att.ns >= 0).all() and (att.ns.sum(axis=1) == dur).all()
    # and each kind covers no more than the union of its evidence within the call
    for k, kind in enumerate(KINDS[:-1]):
        for i in range(len(calls)):
            covered = set()
            for ek, s, d in evidence:
                if ek == kind:
                    covered |= set(range(max(s, t.start[i]), min(s + d, t.end[i])))
            assert att.ns[i, k] <= len(covered)
    final = excess_only(att.ns, np.full(len(calls), baseline))
    assert (final >= 0).all() and (final.sum(axis=1) == np.maximum(dur - baseline, 0)).all()
    assert (final <= att.ns).all()


def test_severity_comes_from_time_not_names():
    assert engine.severity("tail", explained_ns=10, lost_ns=10, window_ns=100, tail_ratio=50.0) == "high"
    assert engine.severity("tail", explained_ns=10, lost_ns=10, window_ns=100, tail_ratio=1.5) == "medium"
    assert engine.severity("tail", explained_ns=0, lost_ns=1, window_ns=1_000, tail_ratio=50.0) == "low"
