"""The evidence chain of one call: what its time went to, by the engine `explain` uses.

`explain` attributes every slow call of a trace; this attributes one call, any call,
with the same layers in the same priority (GPU sync wait, preemption, I/O, network,
syscalls, cold start, blocked off-CPU, on-CPU) and the same blocker shares, so a
call's chain and the finding it belongs to never disagree. The whole duration is
attributed (no baseline subtracted): `unexplained_ns` is what no evidence covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from whyprobe.analyze import cudaops, engine
from whyprobe.analyze.engine import Attributed, FirstCalls, Names
from whyprobe.analyze.evidence import KINDS, UNKNOWN
from whyprobe.analyze.explain import EVIDENCE_COLS, HOST_SOURCES, first_calls, sched_incomplete, trace_names
from whyprobe.analyze.findings import TAIL_SOURCES
from whyprobe.analyze.offcpu import SCHED_SWITCH, off_cpu_intervals
from whyprobe.store.reader import TraceDB


@dataclass
class TraceFacts:
    """What attributing any call of a trace needs from the whole trace (compute once, reuse)."""

    names: Names
    firsts: FirstCalls
    incomplete: dict[int, tuple[int, int]]
    degraded: bool


def trace_facts(db: TraceDB) -> TraceFacts:
    gpu = db.load_arrays(("timestamp", "pid", "source", "op", "arg0"), "source IN (?, ?)", cudaops.GPU_SOURCES)
    return TraceFacts(trace_names(db), first_calls(db, gpu, whole_trace=True), sched_incomplete(db),
                      db.flavor == "ingero" or not db.has("events", "aux"))


def call_chain(db: TraceDB, facts: TraceFacts, event_id: int, longest: int) -> dict[str, Any] | None:
    """Causes of event `event_id` (same shape as a finding's `causes`), ns per cause kind and the
    dominant one; None when there is no such event. `longest` is the trace's longest duration
    (window.max_duration): evidence that overlaps the call starts at most that long before it."""
    call = db.load_events("id = ?", (event_id,))
    if not len(call):
        return None
    start, dur, pid = int(call["timestamp"][0]), int(call["duration"][0]), int(call["pid"][0])
    sources = (*TAIL_SOURCES, SCHED_SWITCH[0], *HOST_SOURCES)
    marks = ", ".join("?" * len(sources))
    cols = EVIDENCE_COLS if facts.degraded else tuple(c for c in EVIDENCE_COLS if c != "cpu")
    # Everything that can explain a call is its own process's: its thread's off-CPU intervals
    # (naming the preemptor or waker), its process's I/O, its thread's syscalls, its GPU work.
    events = db.load_arrays(cols, f"+source IN ({marks}) AND +pid = ? AND timestamp >= ? AND timestamp < ?",
                            (*sources, pid, start - longest, start + max(dur, 1)))
    names = Names(dict(facts.names.threads), dict(facts.names.procs))
    names.learn(events)
    offcpu = off_cpu_intervals(events, degraded=facts.degraded)
    layers = engine.host_layers(events, offcpu, lambda p: p not in facts.incomplete)
    gpu = events[cudaops.is_gpu_call(events)]
    final, att = engine.attribute_tails(call, np.zeros(1, np.int64), np.zeros(1, np.int64), events, gpu, layers, facts.firsts)
    attributed = Attributed.build(np.zeros(1, np.int64), np.array([dur], np.int64), final, call["stack_hash"], att)
    causes = engine.causes_of(attributed, np.zeros(1, np.int64), names)
    return {
        "causes": causes,
        "dominant_cause": engine.dominant(causes),
        "by_kind_ns": {kind: int(final[0, k]) for k, kind in enumerate(KINDS) if final[0, k]},
        "explained_ns": int(dur - final[0, UNKNOWN]),
        "unexplained_ns": int(final[0, UNKNOWN]),
    }
