"""`trace --explain`: the explain engine fed batches of events while recording.

Incremental: per op it keeps a bounded history of recent durations (quantiles
and the slow threshold come from it), per GPU thread the end of its last call
and its recent inter-call gaps, and the attribution of every slow call / gap
seen so far (bounded). Each `feed` only classifies the new rows; a slow call or
gap is attributed once, when its evidence has had `settle_ns` to arrive, against
a sliding buffer of recent events. `findings()` assembles what has accumulated.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from whyprobe.analyze import cudaops, engine
from whyprobe.analyze.engine import Attributed, FirstCalls, Names
from whyprobe.analyze.findings import GAP_OP, TAIL_SOURCES, Context, gap_findings, tail_findings
from whyprobe.analyze.gaps import MIN_CALLS, ThreadGaps, gap_threshold
from whyprobe.analyze.offcpu import off_cpu_intervals
from whyprobe.events import EVENT_ROW_DTYPE, as_event_rows

MIN_OP_CALLS = 20


class LiveExplainer:
    """Feed event rows (any layout with the EVENT_ROW_DTYPE field names: the session's, or
    `TraceDB.load_events()`'s); ask for `findings()` any time."""

    def __init__(
        self,
        *,
        names: Names | None = None,
        op_names: dict[tuple[int, int], str] | None = None,
        degraded: bool = False,
        horizon_ns: int = 30_000_000_000,
        settle_ns: int = 1_000_000_000,
        history: int = 50_000,
        min_severity: str = "low",
    ) -> None:
        self.names = names or Names()
        self.op_names = op_names or {}
        self.degraded = degraded
        self.horizon_ns, self.settle_ns, self.history = horizon_ns, settle_ns, history
        self.min_severity = min_severity
        self._buffer = np.zeros(0, EVENT_ROW_DTYPE)
        self._first_ts: int | None = None
        self._newest = 0
        self._firsts = FirstCalls()
        self._durations: dict[tuple[int, int], deque] = {}
        self._op_count: dict[tuple[int, int], int] = {}
        self._thread_calls: dict[tuple[int, int, int], int] = {}
        self._pending_calls = np.zeros(0, EVENT_ROW_DTYPE)
        self._pending_gaps: list[tuple[int, int, int, int]] = []  # tid, pid, start, end
        self._busy_until: dict[int, int] = {}
        self._gap_hist: dict[int, deque] = {}
        self._gpu_calls: dict[int, int] = {}
        self._tail_keys: dict[tuple[int, int, int], int] = {}
        self._tails = Attributed.empty()
        self._gap_keys: dict[int, int] = {}
        self._gaps = Attributed.empty()
        self._gap_spans: dict[int, list[tuple[int, int]]] = {}

    # ------------------------------------------------------------ feeding

    def feed(self, rows: np.ndarray) -> None:
        """Add a batch of events (any order within the batch)."""
        if not len(rows):
            return
        rows = as_event_rows(rows)
        rows = rows[np.argsort(rows["timestamp"], kind="stable")]
        self.names.learn(rows)
        self._first_ts = int(rows["timestamp"][0]) if self._first_ts is None else min(self._first_ts, int(rows["timestamp"][0]))
        self._newest = max(self._newest, int((rows["timestamp"] + rows["duration"]).max()))
        self._buffer = np.concatenate((self._buffer, rows))
        gpu = rows[cudaops.is_gpu_call(rows)]
        self._firsts.learn(gpu)
        self._classify_calls(rows[np.isin(rows["source"], TAIL_SOURCES)])
        self._classify_gaps(gpu)
        self._attribute_settled()
        self._trim()

    def _classify_calls(self, calls: np.ndarray) -> None:
        slow = []
        for source, op in {(int(s), int(o)) for s, o in zip(calls["source"], calls["op"])}:
            mine = calls[(calls["source"] == source) & (calls["op"] == op)]
            hist = self._durations.setdefault((source, op), deque(maxlen=self.history))
            hist.extend(mine["duration"].tolist())
            self._op_count[(source, op)] = self._op_count.get((source, op), 0) + len(mine)
            for tid, n in zip(*np.unique(mine["tid"], return_counts=True)):
                key = (source, op, int(tid))
                self._thread_calls[key] = self._thread_calls.get(key, 0) + int(n)
            if len(hist) < MIN_OP_CALLS:
                continue
            slow.append(mine[mine["duration"] > engine.slow_threshold(np.fromiter(hist, np.int64, len(hist)))])
        if slow:
            self._pending_calls = np.concatenate([self._pending_calls, *slow])

    def _classify_gaps(self, gpu: np.ndarray) -> None:
        for tid in np.unique(gpu["tid"]).tolist():
            mine = gpu[gpu["tid"] == tid]
            start, end = mine["timestamp"], mine["timestamp"] + mine["duration"]
            busy = np.maximum.accumulate(end)
            prev = self._busy_until.get(tid)
            gaps_from = np.concatenate(([prev] if prev is not None else [], busy[:-1])).astype(np.int64)
            gaps_to = start if prev is not None else start[1:]
            hist = self._gap_hist.setdefault(tid, deque(maxlen=self.history))
            lengths = np.maximum(gaps_to - gaps_from, 0)
            hist.extend(lengths.tolist())
            self._busy_until[tid] = max(int(busy[-1]), prev or 0)
            self._gpu_calls[tid] = self._gpu_calls.get(tid, 0) + len(mine)
            if self._gpu_calls[tid] < MIN_CALLS:
                continue
            threshold = gap_threshold(np.fromiter(hist, np.int64, len(hist)))
            for j in np.flatnonzero(lengths > threshold).tolist():
                self._pending_gaps.append((tid, int(mine["pid"][0]), int(gaps_from[j]), int(gaps_to[j])))

    # ------------------------------------------------------------ attribution

    def _context(self) -> Context:
        window = (self._first_ts or 0, self._newest + 1)
        return Context(None, self.names, self.op_names, {}, window, self.degraded, {}, {})

    def finish(self, names: Names | None = None) -> None:
        """Attribute every slow call and gap still waiting to settle: the trace is over, no
        more evidence will come (what `findings()` then says is what `explain` says).

        `names`: the thread and process names the trace stored (threads that were never
        targets, such as a preemptor, are named only there)."""
        if names is not None:
            self.names.threads.update(names.threads)
            self.names.procs.update(names.procs)
        self._attribute_settled(final=True)

    def _attribute_settled(self, final: bool = False) -> None:
        cutoff = self._newest + 1 if final else self._newest - self.settle_ns
        calls = self._pending_calls
        ready = (calls["timestamp"] + calls["duration"]) <= cutoff
        gaps_ready = [g for g in self._pending_gaps if g[3] <= cutoff]
        if not ready.any() and not gaps_ready:
            return
        events = self._buffer
        layers = engine.host_layers(events, off_cpu_intervals(events, degraded=self.degraded), lambda _pid: True)
        if ready.any():
            self._attribute_calls(calls[ready], events, layers)
            self._pending_calls = calls[~ready]
        if gaps_ready:
            self._attribute_gaps(gaps_ready, layers)
            self._pending_gaps = [g for g in self._pending_gaps if g[3] > cutoff]

    def _attribute_calls(self, calls: np.ndarray, events: np.ndarray, layers: list) -> None:
        baseline = np.array([engine.quantiles(np.fromiter(self._durations[(int(s), int(o))], np.int64))[0] for s, o in zip(calls["source"], calls["op"])], np.int64)
        gpu = events[cudaops.is_gpu_call(events)]
        final, att = engine.attribute_tails(calls, np.arange(len(calls)), baseline, events, gpu, layers, self._firsts)
        group = np.array([self._tail_keys.setdefault((int(s), int(o), int(t)), len(self._tail_keys)) for s, o, t in zip(calls["source"], calls["op"], calls["tid"])], np.int64)
        lost = np.maximum(calls["duration"] - baseline, 0)
        self._tails = self._tails.concat(Attributed.build(group, lost, final, calls["stack_hash"], att)).keep_last(self.history)

    def _attribute_gaps(self, gaps: list[tuple[int, int, int, int]], layers: list) -> None:
        threads = [ThreadGaps(tid, pid, 0, np.zeros(0, np.int64), np.array([s], np.int64), np.array([e], np.int64), 0) for tid, pid, s, e in gaps]
        _owner, ns, att = engine.attribute_gaps(threads, layers)
        group = np.array([self._gap_keys.setdefault(tid, len(self._gap_keys)) for tid, *_ in gaps], np.int64)
        for tid, _pid, s, e in gaps:
            self._gap_spans.setdefault(tid, []).append((s, e))
        lost = np.array([e - s for *_, s, e in gaps], np.int64)
        self._gaps = self._gaps.concat(Attributed.build(group, lost, ns, np.zeros(len(gaps), np.int64), att)).keep_last(self.history)

    def _trim(self) -> None:
        keep_from = self._newest - self.horizon_ns
        pending = [int(self._pending_calls["timestamp"].min())] if len(self._pending_calls) else []
        pending += [g[2] for g in self._pending_gaps]
        keep_from = min([keep_from, *pending])
        ends = self._buffer["timestamp"] + self._buffer["duration"]
        self._buffer = self._buffer[ends >= keep_from]

    # ------------------------------------------------------------ output

    def findings(self) -> list[dict]:
        """Findings over everything fed so far (same shape as `explain()["findings"]`)."""
        ctx = self._context()
        groups = []
        for (source, op, tid), _g in sorted(self._tail_keys.items(), key=lambda kv: kv[1]):
            d = np.fromiter(self._durations[(source, op)], np.int64)
            p50, p99, p999 = engine.quantiles(d)
            members = np.flatnonzero(self._tails.group == _g)
            worst = members[np.argsort(-self._tails.lost[members], kind="stable")[:3]]
            groups.append({
                "source": ctx.source(source), "op": ctx.op(source, op), "tid": tid, "pid": self.names.pid_of(tid),
                "count": self._op_count[(source, op)], "thread_calls": self._thread_calls.get((source, op, tid), 0),
                "p50": p50, "p99": p99, "p999": p999, "threshold": engine.slow_threshold(d), "bytes": 0,
                "slowest": [{"excess_ns": int(self._tails.lost[j])} for j in worst.tolist()],
            })
        out = tail_findings(groups, self._tails, ctx)
        threads = []
        for tid, _g in sorted(self._gap_keys.items(), key=lambda kv: kv[1]):
            spans = np.array(self._gap_spans[tid], np.int64)
            hist = np.fromiter(self._gap_hist[tid], np.int64)
            threads.append(ThreadGaps(tid, self.names.pid_of(tid), self._gpu_calls[tid], hist, spans[:, 0], spans[:, 1], gap_threshold(hist)))
        out += gap_findings(threads, self._gaps, ctx)
        window = ctx.window[1] - ctx.window[0]
        return engine.rank(engine.mark_minor(engine.merge(out), window), self.min_severity)


__all__ = ["LiveExplainer", "GAP_OP"]
