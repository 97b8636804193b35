"""Preemption blame weighted by the CPU time the preemptor really took (sched_switch aux on preempted rows)."""

from __future__ import annotations

import pytest
from explain_synth import ENGINE_PID, ENGINE_TID, MS, THREADS, US, ev, launch_loop, write_db

from whyprobe.analyze.explain import explain
from whyprobe.events import F_PREEMPTED, Source
from whyprobe.store.reader import open_trace

KW_PID = KW_TID = 300


def _preempted(ts: int, dur: int, ran: int) -> dict:
    return ev(ts, dur, source=int(Source.HOST), op=1, tid=ENGINE_TID, pid=ENGINE_PID, arg1=KW_TID, arg2=3, aux=ran, flags=F_PREEMPTED)


def _off_cpu(tmp_path, ran: int) -> dict:
    # 10 of 200 launches take 9 ms; in each the engine is preempted for 8.5 ms by a kworker that ran `ran` ns of it
    slow = {i: 9 * MS for i in range(15, 200, 19)}
    calls, spans = launch_loop(200, slow=slow)
    threads = {**THREADS, KW_TID: (KW_PID, "kworker/3:1")}
    with open_trace(write_db(tmp_path / "t.db", calls + [_preempted(s + 200 * US, 8_500 * US, ran) for s, _ in spans], threads)) as db:
        top = explain(db)["findings"][0]
    assert (top["op"], top["tid"], top["dominant_cause"]) == ("cudaLaunchKernel", ENGINE_TID, "off_cpu")
    return next(c for c in top["causes"] if c["kind"] == "off_cpu")


def test_preemptor_is_charged_only_the_cpu_time_it_ran(tmp_path):
    # WHEN the kworker ran 100 us of each 8.5 ms preempted stretch
    off = _off_cpu(tmp_path, 100 * US)
    # THEN the whole stretch is still off-CPU, but the kworker is blamed for 10 x 100 us only, the rest for nobody
    assert off["explained_ns"] == 10 * 8_500 * US
    assert off["blockers"] == [{"pid": KW_PID, "tid": KW_TID, "comm": "kworker/3:1", "ns": 10 * 100 * US, "cpu": 3}]


@pytest.mark.parametrize("ran", [0, 20 * MS], ids=["unknown", "more-than-the-interval"])
def test_unknown_or_overlong_run_time_charges_the_whole_interval(tmp_path, ran):
    # WHEN aux is 0 (older traces: unknown) or exceeds the interval (it also ran elsewhere)
    off = _off_cpu(tmp_path, ran)
    # THEN the preemptor takes the whole interval, as before
    assert off["blockers"] == [{"pid": KW_PID, "tid": KW_TID, "comm": "kworker/3:1", "ns": 10 * 8_500 * US, "cpu": 3}]
