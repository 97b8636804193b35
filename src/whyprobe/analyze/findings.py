"""Findings from attributed targets: tails per (op, thread), gaps per thread, with text and fixes."""

from __future__ import annotations

import numpy as np

from whyprobe.analyze import cudaops, engine
from whyprobe.analyze.engine import Attributed, FirstCalls, Names
from whyprobe.analyze.gaps import ThreadGaps, find_gaps
from whyprobe.analyze.offcpu import off_cpu_intervals
from whyprobe.analyze.recommend import recommend, summarize
from whyprobe.analyze.samples import Samples, hot_frames
from whyprobe.events import F_FAULT_WAIT, Source, op_name
from whyprobe.store.kernels import KERNEL_LAUNCH, hex_handle

GAP_OP = "gpu_idle"
TAIL_SOURCES = (int(Source.CUDA), int(Source.DRIVER), int(Source.CUSTOM))
INGERO_NOTE = (
    "Ingero database: sched_switch rows carry no preemptor, waker or prev_state, "
    "so off-CPU time is matched by interval overlap on the thread only."
)


# ---------------------------------------------------------------- findings


class Context:
    """What finding assembly needs besides the attribution: names, labels, window."""

    def __init__(self, stacks, names: Names, op_names: dict, source_names: dict, window: tuple[int, int], degraded: bool,
                 incomplete_sched: dict[int, tuple[int, int]], not_stored: dict[tuple[int, int, int], int],
                 samples: Samples | None = None) -> None:
        self.stacks, self.names, self.window, self.degraded = stacks, names, window, degraded
        self.samples = samples  # on-CPU samples of the window; None when the trace has none
        self.op_names, self.source_names = op_names, source_names
        self.incomplete_sched, self.not_stored = incomplete_sched, not_stored
        # (pid, launch handle) -> demangled kernel name (analyze.kernels.kernel_names)
        self.kernels: dict[tuple[int, int], str] = {}
        # TCP retransmits on traced threads' own sockets: (timestamp, tid, peer address) sorted by time
        self.retransmits: list[tuple[int, int, str]] = []
        # Memory stall rows and OOM kills of the analyzed events (set by analyze())
        self.memory: np.ndarray | None = None
        self.ooms: np.ndarray | None = None

    def kernel(self, pid: int, handle: int) -> str:
        return self.kernels.get((pid, handle)) or hex_handle(handle)

    def op(self, source: int, op: int) -> str:
        return self.op_names.get((source, op)) or op_name(source, op)

    def source(self, source: int) -> str:
        name = self.source_names.get(source)
        if name:
            return str(name).lower()
        return Source(source).name.lower() if source in Source._value2member_map_ else str(source)

    def stack(self, stack_hash: int) -> list[str]:
        return self.stacks(stack_hash) if self.stacks is not None else []

    def notes(self, pid: int, causes: list[dict], gap: bool) -> list[str]:
        out = []
        if self.degraded and any(c["kind"] == "off_cpu" for c in causes):
            out.append(INGERO_NOTE)
        if pid in self.incomplete_sched:
            kept, counted = self.incomplete_sched[pid]
            out.append(f"Only {kept} of {counted} sched_switch events of pid {pid} were stored: on-CPU time is not inferred and stays unknown.")
        if gap:
            lost = sum(n for (s, _o, p), n in self.not_stored.items() if p == pid and s in cudaops.GPU_SOURCES)
            if lost:
                out.append(f"{lost} CUDA calls of pid {pid} were counted but not stored by the recorder; gaps are measured between stored calls.")
        return out


def _add_frames(f: dict, ctx: Context, start: np.ndarray, end: np.ndarray) -> None:
    """Give the on_cpu cause the frames the thread ran in the finding's stretches (DESIGN `frames`)."""
    on_cpu = next((c for c in f["causes"] if c["kind"] == "on_cpu"), None)
    if on_cpu is None:
        return
    on_cpu["frames"] = []
    if ctx.samples is None:
        return
    hot = hot_frames(ctx.samples, f["tid"], start, end)
    on_cpu["samples"] = hot["samples"] if hot else 0
    if hot:
        on_cpu["frames"] = hot["frames"]
        on_cpu["data_loading_share"] = hot["data_loading"]


def _finish(f: dict, ctx: Context, gap: bool) -> dict:
    window_ns = max(ctx.window[1] - ctx.window[0], 1)
    f["explained_ns"] = engine.explained(f["causes"])
    f["dominant_cause"] = engine.dominant(f["causes"])
    f["id"] = engine.finding_id(f["kind"], f["op"], f["tid"], f["dominant_cause"])
    f["window_share"] = round(f["lost_ns"] / window_ns, 4)
    f["severity"] = engine.severity(f["kind"], f["explained_ns"], f["lost_ns"], window_ns, f["tail_ratio"])
    f["notes"] = ctx.notes(f["pid"], f["causes"], gap)
    f["summary"] = summarize(f)
    f["recommendations"] = recommend(f)
    return f


def retransmit_peer(detail: str | None) -> str:
    """The remote end of a retransmit's 'src:port -> dst:port STATE' (the owner's socket: dst is its peer)."""
    return (detail or "").partition(" -> ")[2].split(" ", 1)[0]


def _add_peers(causes: list[dict], tid: int, starts: np.ndarray, ends: np.ndarray, ctx: Context) -> None:
    """Name the peers of the retransmits inside the targets, on the network cause they explain."""
    net = next((c for c in causes if c["kind"] == "network"), None)
    if net is None or not ctx.retransmits:
        return
    order = np.argsort(starts, kind="stable")
    starts, ends = np.asarray(starts)[order], np.asarray(ends)[order]
    counts: dict[str, int] = {}
    for ts, rtid, peer in ctx.retransmits:
        if rtid != tid:
            continue
        i = int(np.searchsorted(starts, ts, "right")) - 1
        if i >= 0 and ts < ends[i]:
            counts[peer] = counts.get(peer, 0) + 1
    if counts:
        net["peers"] = [{"peer": p, "retransmits": n} for p, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def _add_stalls(causes: list[dict], tid: int, pid: int, starts: np.ndarray, ends: np.ndarray, ctx: Context) -> None:
    """Count the memory stalls inside the targets (and OOM kills in their process) on the memory cause."""
    mem = next((c for c in causes if c["kind"] == "memory"), None)
    if mem is None or ctx.memory is None:
        return
    order = np.argsort(starts, kind="stable")
    starts, ends = np.asarray(starts, np.int64)[order], np.asarray(ends, np.int64)[order]
    rows = ctx.memory

    def inside(ts: np.ndarray) -> np.ndarray:
        i = np.searchsorted(starts, ts, "right") - 1
        return (i >= 0) & (ts < ends[np.maximum(i, 0)])

    mine = rows[(rows["tid"] == tid) & inside(np.asarray(rows["timestamp"], np.int64))]
    stalls: dict[str, int] = {}
    for op, flags in zip(mine["op"].tolist(), mine["flags"].tolist()):
        name = engine.MEMORY_STALL_OPS.get(op) or ("page_fault_wait" if flags & F_FAULT_WAIT else "")
        if name:
            stalls[name] = stalls.get(name, 0) + 1
    if stalls:
        mem["stalls"] = dict(sorted(stalls.items()))
    ooms = ctx.ooms
    hit = ooms[((ooms["pid"] == pid) | (ooms["arg0"] == pid)) & inside(np.asarray(ooms["timestamp"], np.int64))] if ooms is not None else []
    if len(hit):
        mem["oom_kills"] = [{"victim_pid": int(v), "by_tid": int(t), "timestamp_ns": int(ts)}
                            for v, t, ts in zip(hit["arg0"].tolist(), hit["tid"].tolist(), hit["timestamp"].tolist())]


def tail_findings(groups: list[dict], att: Attributed, ctx: Context, spans: tuple[np.ndarray, np.ndarray] | None = None) -> list[dict]:
    """One finding per group; `spans` = (start, end) of every attributed slow call, for on-CPU frames."""
    out = []
    for g, meta in enumerate(groups):
        members = np.flatnonzero(att.group == g)
        if not len(members):
            continue
        stacks = att.stack[members]
        stacks = stacks[stacks != 0]
        top_stack = int(np.bincount(np.unique(stacks, return_inverse=True)[1]).argmax()) if len(stacks) else -1
        f = {
            "kind": "tail", "op": meta["op"], "tid": meta["tid"], "pid": meta["pid"], "comm": ctx.names.comm(meta["tid"], meta["pid"]),
            "source": meta["source"], "count": meta["count"], "thread_calls": meta["thread_calls"],
            "p50_ns": meta["p50"], "p99_ns": meta["p99"], "p999_ns": meta["p999"],
            "tail_ratio": round(meta["p99"] / max(meta["p50"], 1), 1), "threshold_ns": meta["threshold"],
            "slow_calls": len(members), "lost_ns": int(att.lost[members].sum()),
            "causes": engine.causes_of(att, members, ctx.names),
            "stack": ctx.stack(int(np.unique(stacks)[top_stack])) if top_stack >= 0 else [],
            "slowest": meta["slowest"],
        }
        if meta.get("bytes"):
            f["bytes"] = meta["bytes"]
        if "windows" in meta:
            _add_peers(f["causes"], meta["tid"], *meta["windows"], ctx)
            _add_stalls(f["causes"], meta["tid"], meta["pid"], *meta["windows"], ctx)
        if meta.get("kernels"):
            f["kernels"] = meta["kernels"]
            if len(meta["kernels"]) == 1:
                f["kernel"] = meta["kernels"][0]["kernel"]
        if spans is not None:
            _add_frames(f, ctx, spans[0][members], spans[1][members])
        out.append(_finish(f, ctx, gap=False))
    return out


def gap_findings(gaps: list[ThreadGaps], att: Attributed, ctx: Context) -> list[dict]:
    out = []
    for i, g in enumerate(gaps):
        members = np.flatnonzero(att.group == i)
        if not len(members):
            continue
        p50, p99, p999 = engine.quantiles(g.all_gaps)
        lengths = g.end - g.start
        top = np.argsort(-lengths, kind="stable")[:5]
        f = {
            "kind": "gap", "op": GAP_OP, "tid": g.tid, "pid": g.pid, "comm": ctx.names.comm(g.tid, g.pid), "source": "cuda",
            "count": int(len(g.all_gaps)), "thread_calls": g.calls, "quantiles_of": "inter-call gap",
            "p50_ns": p50, "p99_ns": p99, "p999_ns": p999, "tail_ratio": round(p99 / max(p50, 1), 1), "threshold_ns": g.threshold_ns,
            "slow_calls": len(members), "lost_ns": int(att.lost[members].sum()),
            "causes": engine.causes_of(att, members, ctx.names), "stack": [],
            "gaps": [{"start_ns": int(g.start[j]), "end_ns": int(g.end[j]), "ns": int(lengths[j])} for j in top.tolist()],
        }
        _add_peers(f["causes"], g.tid, g.start, g.end, ctx)
        _add_stalls(f["causes"], g.tid, g.pid, g.start, g.end, ctx)
        _add_frames(f, ctx, g.start, g.end)
        out.append(_finish(f, ctx, gap=True))
    return out


def _by_op(calls) -> list[tuple[int, int, np.ndarray]]:
    """(source, op, ascending row indices) per distinct (source, op), in (source, op) order.
    Two hash-based passes: np.unique(axis=0) sorts a row view and costs more than the analysis."""
    out = []
    src, ops = calls["source"], calls["op"]
    for source in np.unique(src).tolist():
        of_source = np.flatnonzero(src == source)
        mine = ops[of_source]
        for op in np.unique(mine).tolist():
            out.append((source, op, of_source[mine == op]))
    return out


def _slow_kernels(calls: np.ndarray, slow: np.ndarray, ctx: Context) -> list[dict]:
    """The kernels the slow launches launched, most slow calls first: [{"kernel", "slow_calls"}]."""
    counts: dict[str, int] = {}
    for pid, handle in zip(calls["pid"][slow].tolist(), calls["arg0"][slow].tolist()):
        name = ctx.kernel(pid, handle)
        counts[name] = counts.get(name, 0) + 1
    return [{"kernel": k, "slow_calls": n} for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def tail_groups(calls: np.ndarray, ctx: Context, only_pid: int | None, only_op: str | None) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Per op: quantiles and the slow set; one group per (op, thread) with slow calls.
    Returns (groups, slow call indices into `calls`, group of each)."""
    groups, slow_idx, slow_group = [], [], []
    for source, op, in_op in _by_op(calls):
        name = ctx.op(source, op)
        if only_op is not None and name != only_op:
            continue
        d = calls["duration"][in_op]
        p50, p99, p999 = engine.quantiles(d)
        threshold = engine.slow_threshold(d)
        slow = in_op[d > threshold]
        if only_pid is not None:
            slow = slow[calls["pid"][slow] == only_pid]
        for tid in np.unique(calls["tid"][slow]).tolist():
            mine = slow[calls["tid"][slow] == tid]
            # Slowest first, ties by time: the same trace in any row order gives the same answer.
            worst = mine[np.lexsort((calls["timestamp"][mine], -calls["duration"][mine]))[:3]]
            is_copy = (source, op) in cudaops.MEMCPY
            kernels = _slow_kernels(calls, mine, ctx) if (source, op) in KERNEL_LAUNCH else []
            groups.append({
                "source": ctx.source(source), "op": name, "tid": int(tid), "pid": int(calls["pid"][mine[0]]),
                "count": int(len(in_op)), "thread_calls": int((calls["tid"][in_op] == tid).sum()),
                "p50": p50, "p99": p99, "p999": p999, "threshold": threshold,
                "bytes": int(np.median(calls["arg0"][mine])) if is_copy else 0,
                "kernels": kernels,
                "slowest": [{"timestamp_ns": int(calls["timestamp"][j]), "duration_ns": int(calls["duration"][j])} for j in worst.tolist()],
            })
            slow_idx.append(mine)
            slow_group.append(np.full(len(mine), len(groups) - 1, np.int64))
    if not slow_idx:
        return groups, np.zeros(0, np.int64), np.zeros(0, np.int64)
    return groups, np.concatenate(slow_idx), np.concatenate(slow_group)


def analyze(events: np.ndarray, window: tuple[int, int], ctx: Context, firsts: FirstCalls, *, pid: int | None, op: str | None,
             on_cpu_ok) -> list[dict]:
    """Tail and gap findings for the calls inside `window`, from the evidence in `events`."""
    in_window = (events["timestamp"] >= window[0]) & (events["timestamp"] < window[1])
    gpu_all = events[cudaops.is_gpu_call(events)]
    calls = events[in_window & np.isin(events["source"], TAIL_SOURCES)]
    offcpu = off_cpu_intervals(events, degraded=ctx.degraded)
    layers = engine.host_layers(events, offcpu, on_cpu_ok)
    ctx.memory = engine.memory_stalls(events)
    host = events[events["source"] == int(Source.HOST)]
    ctx.ooms = host[host["op"] == engine.OOM_KILL_OP]
    findings = []

    groups, slow_idx, slow_group = tail_groups(calls, ctx, pid, op)
    if len(slow_idx):
        baseline = np.array([groups[g]["p50"] for g in slow_group.tolist()], np.int64)
        final, att = engine.attribute_tails(calls, slow_idx, baseline, events, gpu_all, layers, firsts)
        lost = np.maximum(calls["duration"][slow_idx] - baseline, 0)
        for g, meta in enumerate(groups):
            mine = slow_idx[slow_group == g]
            meta["windows"] = (calls["timestamp"][mine], calls["timestamp"][mine] + calls["duration"][mine])
        spans = (calls["timestamp"][slow_idx], calls["timestamp"][slow_idx] + calls["duration"][slow_idx])
        findings += tail_findings(groups, Attributed.build(slow_group, lost, final, calls["stack_hash"][slow_idx], att), ctx, spans)

    if op is None or op == GAP_OP:
        gpu_window = calls[cudaops.is_gpu_call(calls)]
        if pid is not None:
            gpu_window = gpu_window[gpu_window["pid"] == pid]
        gaps = [g for g in find_gaps(gpu_window) if len(g.start)]
        if gaps:
            owner, ns, att = engine.attribute_gaps(gaps, layers)
            lost = np.concatenate([g.end - g.start for g in gaps])
            findings += gap_findings(gaps, Attributed.build(owner, lost, ns, np.zeros(len(owner), np.int64), att), ctx)
    return findings
