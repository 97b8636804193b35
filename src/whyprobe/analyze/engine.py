"""The explain engine on arrays: evidence layers, slow-call and gap attribution, findings.

Input is an EVENT_ROW_DTYPE array (what `TraceDB.load_events()` returns) or an
`EventColumns` (what `TraceDB.load_arrays()` returns: the same columns and selections,
without the wide record copies), so the batch `explain()` and the incremental
`LiveExplainer` share all of it. Code here reads columns and selects rows; it never
iterates records.

Tails: per op, exact quantiles; a call is slow above min(p99, median + 5 MAD·1.4826)
and at least twice the median. Each slow call's own interval, on its own thread,
is split between evidence in priority order — sync_wait (a synchronizing call
with earlier GPU work queued), preempted off-CPU (the preemptor named only for
the CPU time it took, the rest of the interval blocker-less), block I/O of its process while it sleeps,
network and syscalls of its thread, blocked off-CPU, cold start (first launch
of a kernel function, first call/allocation of a process), on-CPU (the thread's
scheduling is traced and it was not off-CPU) — the rest is `unknown`. Only the
excess over the op's median is attributed: the typical part is deducted from
on-CPU and unknown first, since a typical call has those too.

Gaps: see gaps.py; the whole gap is attributed, with the same host layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from whyprobe.analyze import cudaops
from whyprobe.analyze.evidence import (
    KINDS,
    Attribution,
    Layer,
    Owned,
    Targets,
    attribute,
    blocker_shares,
    overlaps,
    excess_only,
)
from whyprobe.analyze.gaps import ThreadGaps
from whyprobe.analyze.offcpu import PREEMPTED, OffCpu
from whyprobe.events import F_FAULT_WAIT, F_SOCK_OWNER, Source

TCP_RETRANSMIT = 1  # op of Source.TCP
SCHED_SWITCH_OP, OOM_KILL_OP = 1, 4  # ops of Source.HOST
MEMORY_STALL_OPS = {20: "direct_reclaim", 21: "memcg_reclaim", 22: "compaction"}  # ops of Source.HOST (bpf/mem.bpf.c); 10-12 are Ingero's pod events
MAD_K = 5.0
MIN_TAIL_FACTOR = 2.0
TOP_BLOCKERS = 5
SEVERITY_RANK = {"high": 0, "medium": 1, "low": 2}
# Materiality: a finding that costs less than this is `minor` (listed after the real ones, no fix).
MINOR_FLOOR_NS = 1_000_000
MINOR_WINDOW_SHARE = 0.001


# ---------------------------------------------------------------- names


@dataclass
class Names:
    """tid/pid → comm, from thread_names/process_names and the events themselves."""

    threads: dict[int, tuple[int, str]] = field(default_factory=dict)
    procs: dict[int, str] = field(default_factory=dict)
    tid_pid: dict[int, int] = field(default_factory=dict)

    def learn(self, events: np.ndarray) -> None:
        if len(events):
            tids, first = np.unique(events["tid"], return_index=True)
            for t, p in zip(tids.tolist(), events["pid"][first].tolist()):
                self.tid_pid.setdefault(t, p)

    def pid_of(self, tid: int) -> int:
        if tid in self.threads:
            return self.threads[tid][0]
        if tid in self.tid_pid:
            return self.tid_pid[tid]
        return tid if tid in self.procs else 0

    def comm(self, tid: int, pid: int | None = None) -> str:
        if tid in self.threads and self.threads[tid][1]:
            return self.threads[tid][1]
        pid = self.pid_of(tid) if not pid or pid < 0 else pid
        return self.procs.get(pid, "")

    def known(self, tid: int) -> bool:
        return tid in self.threads or tid in self.tid_pid or tid in self.procs


# ---------------------------------------------------------------- evidence


def _col(rows: np.ndarray, name: str) -> np.ndarray:
    return np.asarray(rows[name], np.int64)


def _unknown(n: int) -> np.ndarray:
    return np.full(n, -1, np.int64)


def _io_while_blocked(io: np.ndarray, offcpu: OffCpu, off: np.ndarray) -> Layer:
    """Block I/O of a thread's process counts for the thread only while the thread sleeps
    (I/O another thread waits for is not this thread's cause). A thread whose scheduling
    was not traced falls back to its own I/O requests."""
    start, end = _col(io, "timestamp"), _col(io, "timestamp") + _col(io, "duration")
    blocked = Targets(offcpu.tid[off], offcpu.pid[off], offcpu.start[off], offcpu.end[off])
    pid_io = Layer("io", _col(io, "pid"), start, end, _col(io, "tid"), _col(io, "pid"), _unknown(len(io)), by_pid=True)
    b, e = overlaps(pid_io, blocked)
    untraced = ~np.isin(_col(io, "tid"), offcpu.tid)
    return Layer(
        "io",
        np.concatenate((blocked.tid[b], _col(io, "tid")[untraced])),
        np.concatenate((np.maximum(blocked.start[b], pid_io.start[e]), start[untraced])),
        np.concatenate((np.minimum(blocked.end[b], pid_io.end[e]), end[untraced])),
        np.concatenate((pid_io.blocker_tid[e], _col(io, "tid")[untraced])),
        np.concatenate((pid_io.blocker_pid[e], _col(io, "pid")[untraced])),
        _unknown(len(b) + int(untraced.sum())),
    )


def _preempted(offcpu: OffCpu, pre: np.ndarray) -> Layer:
    """Preempted intervals: the preemptor is charged only the CPU time it took (it runs first,
    right after the switch-out); the rest of the interval is off-CPU with no blocker named.
    Where its run time is unknown (older traces), it is charged the whole interval."""
    tid, start, end, who, cpu = offcpu.tid[pre], offcpu.start[pre], offcpu.end[pre], offcpu.preemptor[pre], offcpu.cpu[pre]
    ran = offcpu.preemptor_ran[pre]
    split = np.where(ran >= 0, start + ran, end)
    rest = split < end
    return Layer(
        "off_cpu",
        np.concatenate((tid, tid[rest])),
        np.concatenate((start, split[rest])),
        np.concatenate((split, end[rest])),
        np.concatenate((who, _unknown(int(rest.sum())))),
        _unknown(len(tid) + int(rest.sum())),
        np.concatenate((cpu, cpu[rest])),
    )


def _retransmit_waits(tcp: np.ndarray, offcpu: OffCpu, off: np.ndarray) -> Layer:
    """A retransmit on a thread's own socket (the kernel names the owner: F_SOCK_OWNER) is an
    instant; the blocked interval it falls in is the thread waiting for what the path dropped,
    so that interval counts as network time. Without sched records there is no wait to measure."""
    own = tcp[(np.asarray(tcp["flags"], np.int64) & F_SOCK_OWNER) != 0]
    n_off = int(off.sum())
    blocked = Layer("off_cpu", offcpu.tid[off], offcpu.start[off], offcpu.end[off], _unknown(n_off), _unknown(n_off), _unknown(n_off))
    ts = _col(own, "timestamp")
    _, e = overlaps(blocked, Targets(_col(own, "tid"), _col(own, "pid"), ts, ts + 1))
    e = np.unique(e)
    return Layer("network", blocked.key[e], blocked.start[e], blocked.end[e], _unknown(len(e)), _unknown(len(e)), _unknown(len(e)))


def memory_stalls(events: np.ndarray) -> np.ndarray:
    """Rows that are memory stalls of a thread: reclaim and compaction intervals, and
    blocked intervals that began in a page fault (F_FAULT_WAIT)."""
    host = events["source"] == int(Source.HOST)
    stall = host & np.isin(events["op"], list(MEMORY_STALL_OPS))
    fault = host & (events["op"] == SCHED_SWITCH_OP) & ((np.asarray(events["flags"], np.int64) & F_FAULT_WAIT) != 0)
    return events[(stall | fault) & (events["duration"] > 0)]


def _memory(events: np.ndarray) -> Layer:
    rows = memory_stalls(events)
    start = _col(rows, "timestamp")
    n = len(rows)
    return Layer("memory", _col(rows, "tid"), start, start + _col(rows, "duration"), _unknown(n), _unknown(n), _unknown(n))


def host_layers(events: np.ndarray, offcpu: OffCpu, on_cpu_ok: Callable[[int], bool]) -> list[Layer]:
    """Host evidence in priority order: preempted, memory stalls, I/O, network, syscalls, blocked, on-CPU."""
    pre = offcpu.state == PREEMPTED
    off = ~pre
    io = events[(events["source"] == int(Source.IO)) & (events["duration"] > 0)]
    net = events[(events["source"] == int(Source.NET)) & (events["duration"] > 0)]
    tcp = events[(events["source"] == int(Source.TCP)) & (events["op"] == TCP_RETRANSMIT)]
    sysc = events[(events["source"] == int(Source.SYSCALL)) & (events["duration"] > 0)]
    layers = [_preempted(offcpu, pre), _memory(events)]
    layers.append(_io_while_blocked(io, offcpu, off))
    layers.append(_retransmit_waits(tcp, offcpu, off))
    for kind, rows, by_pid in (("network", net, False), ("syscall", sysc, False)):
        key = _col(rows, "pid" if by_pid else "tid")
        end = _col(rows, "timestamp") + _col(rows, "duration")
        layers.append(Layer(kind, key, _col(rows, "timestamp"), end, _col(rows, "tid"), _col(rows, "pid"), _unknown(len(rows)), by_pid))
    # The waker of a blocked thread ran wherever it ran: no CPU, so no cpuset advice for it.
    layers.append(Layer("off_cpu", offcpu.tid[off], offcpu.start[off], offcpu.end[off], offcpu.waker_tid[off], offcpu.waker_pid[off],
                        np.full(int(off.sum()), -1, np.int64)))
    cov = [(t, s, e) for t, (s, e) in offcpu.coverage().items()]
    pids = offcpu.pid_by_tid()
    cov = [(t, s, e) for t, s, e in cov if on_cpu_ok(pids[t])]
    ct = np.array([c[0] for c in cov], np.int64)
    layers.append(
        Layer(
            "on_cpu", ct, np.array([c[1] for c in cov], np.int64), np.array([c[2] for c in cov], np.int64),
            ct, np.array([pids[int(t)] for t in ct], np.int64), _unknown(len(cov)),
        )
    )
    return layers


# ---------------------------------------------------------------- tails


def quantiles(d: np.ndarray) -> tuple[int, int, int]:
    """Exact p50/p99/p99.9 (numpy linear interpolation, truncated to ns), like `stats`."""
    p50, p99, p999 = np.percentile(d, [50.0, 99.0, 99.9])
    return int(p50), int(p99), int(p999)


def slow_threshold(d: np.ndarray) -> int:
    p50, p99, _ = quantiles(d)
    mad = float(np.median(np.abs(d - np.median(d))))
    robust = float(np.median(d)) + MAD_K * 1.4826 * mad
    return int(max(min(p99, robust), MIN_TAIL_FACTOR * p50))


def sync_waits(targets: np.ndarray, gpu_calls: np.ndarray) -> Owned:
    """Slow synchronizing calls that had GPU work queued since the previous sync of their process
    (same stream for a stream sync with a known stream): they wait on the GPU, not the host.
    The blocker is the thread that queued the last of that work."""
    idx = np.flatnonzero(cudaops.member(targets, cudaops.SYNC | cudaops.IMPLICIT_SYNC))
    stream_sync = cudaops.member(targets, cudaops.STREAM_SYNC)
    work = gpu_calls[cudaops.member(gpu_calls, cudaops.ASYNC_WORK)]
    syncs = gpu_calls[cudaops.member(gpu_calls, cudaops.SYNC)]
    hit, btid, bpid = [], [], []
    for pid in np.unique(targets["pid"][idx]).tolist():
        mine = work[work["pid"] == pid]
        order = np.argsort(mine["timestamp"], kind="stable")
        w_ts, w_tid, w_stream = mine["timestamp"][order], mine["tid"][order], mine["arg2"][order]
        s = syncs[syncs["pid"] == pid]
        sync_end = np.sort(s["timestamp"] + s["duration"])
        for i in idx[targets["pid"][idx] == pid].tolist():
            start = int(targets["timestamp"][i])
            k = int(np.searchsorted(sync_end, start, "right"))
            lo = int(np.searchsorted(w_ts, sync_end[k - 1], "right")) if k else 0
            hi = int(np.searchsorted(w_ts, start, "left"))
            if stream_sync[i] and targets["arg2"][i] != 0:
                same = np.flatnonzero(w_stream[lo:hi] == targets["arg2"][i])
                hi = lo + int(same[-1]) + 1 if len(same) else lo
            if hi > lo:
                hit.append(i)
                btid.append(int(w_tid[hi - 1]))
                bpid.append(pid)
    return Owned("sync_wait", np.array(hit, np.int64), np.array(btid, np.int64), np.array(bpid, np.int64))


@dataclass
class FirstCalls:
    """When each process first called CUDA, first allocated, and first launched each function."""

    call: dict[int, int] = field(default_factory=dict)
    alloc: dict[int, int] = field(default_factory=dict)
    launch: dict[tuple[int, int, int], int] = field(default_factory=dict)

    def learn(self, gpu_calls: np.ndarray) -> None:
        for mapping, rows, by_function in (
            (self.call, gpu_calls, False),
            (self.alloc, gpu_calls[cudaops.member(gpu_calls, cudaops.ALLOC)], False),
            (self.launch, gpu_calls[cudaops.member(gpu_calls, cudaops.LAUNCH)], True),
        ):
            for key, ts in _firsts(rows, by_function):
                if key not in mapping or ts < mapping[key]:
                    mapping[key] = ts

    def cold(self, targets: np.ndarray) -> np.ndarray:
        out = np.zeros(len(targets), bool)
        launch = cudaops.member(targets, cudaops.LAUNCH)
        alloc = cudaops.member(targets, cudaops.ALLOC)
        cols = zip(targets["timestamp"].tolist(), targets["pid"].tolist(), targets["source"].tolist(), targets["arg0"].tolist())
        for i, (ts, pid, source, fn) in enumerate(cols):
            out[i] = (
                self.call.get(pid) == ts
                or (alloc[i] and self.alloc.get(pid) == ts)
                or (launch[i] and self.launch.get((source, pid, fn)) == ts)
            )
        return out


def _firsts(rows: np.ndarray, by_function: bool) -> list[tuple[object, int]]:
    """(key, earliest timestamp) per pid, or per (source, pid, function) when by_function."""
    if not len(rows):
        return []
    cols = [np.asarray(rows["source"]), np.asarray(rows["pid"]), np.asarray(rows["arg0"])] if by_function else [np.asarray(rows["pid"])]
    order = np.lexsort((rows["timestamp"], *cols[::-1]))
    k = np.stack([c[order] for c in cols], axis=1)
    first = order[np.concatenate(([True], np.any(k[1:] != k[:-1], axis=1)))]
    ts = rows["timestamp"][first].tolist()
    if by_function:
        return list(zip(zip(*(c[first].tolist() for c in cols)), ts))
    return list(zip(cols[0][first].tolist(), ts))


# ---------------------------------------------------------------- attributed targets


@dataclass
class Attributed:
    """Attributed targets plus their blocker shares; group keys select a finding's targets."""

    group: np.ndarray  # finding group index per target
    lost: np.ndarray  # per target: excess over the median (tails) or gap length
    final: np.ndarray  # (n, len(KINDS)) ns per cause, rows sum to `lost`
    stack: np.ndarray
    b_target: np.ndarray
    b_kind: np.ndarray
    b_tid: np.ndarray
    b_pid: np.ndarray
    b_cpu: np.ndarray
    b_ns: np.ndarray

    @staticmethod
    def empty() -> "Attributed":
        z = np.zeros(0, np.int64)
        return Attributed(z, z, np.zeros((0, len(KINDS)), np.int64), z, z, z, z, z, z, z)

    def __len__(self) -> int:
        return len(self.group)

    def concat(self, other: "Attributed") -> "Attributed":
        n = len(self)
        return Attributed(
            np.concatenate((self.group, other.group)), np.concatenate((self.lost, other.lost)),
            np.concatenate((self.final, other.final)), np.concatenate((self.stack, other.stack)),
            np.concatenate((self.b_target, other.b_target + n)), np.concatenate((self.b_kind, other.b_kind)),
            np.concatenate((self.b_tid, other.b_tid)), np.concatenate((self.b_pid, other.b_pid)),
            np.concatenate((self.b_cpu, other.b_cpu)), np.concatenate((self.b_ns, other.b_ns)),
        )

    def keep_last(self, n: int) -> "Attributed":
        cut = max(len(self) - n, 0)
        if not cut:
            return self
        b = self.b_target >= cut
        return Attributed(
            self.group[cut:], self.lost[cut:], self.final[cut:], self.stack[cut:], self.b_target[b] - cut,
            self.b_kind[b], self.b_tid[b], self.b_pid[b], self.b_cpu[b], self.b_ns[b],
        )

    @staticmethod
    def build(group: np.ndarray, lost: np.ndarray, final: np.ndarray, stack: np.ndarray, att: Attribution) -> "Attributed":
        shares = blocker_shares(att, final)
        keep = shares > 0
        return Attributed(
            np.asarray(group, np.int64), np.asarray(lost, np.int64), final, np.asarray(stack, np.int64),
            att.pair_target[keep], att.pair_kind[keep], att.pair_tid[keep], att.pair_pid[keep], att.pair_cpu[keep], shares[keep],
        )


def attribute_tails(
    calls: np.ndarray, slow_idx: np.ndarray, baseline: np.ndarray, events: np.ndarray, gpu_calls: np.ndarray,
    layers: list[Layer], firsts: FirstCalls,
) -> tuple[np.ndarray, Attribution]:
    """(final ns per slow call, raw attribution) for calls[slow_idx]."""
    rows = calls[slow_idx]
    targets = Targets(_col(rows, "tid"), _col(rows, "pid"), _col(rows, "timestamp"), _col(rows, "timestamp") + _col(rows, "duration"))
    cold = np.flatnonzero(firsts.cold(rows))
    owned_cold = Owned("cold_start", cold, _col(rows, "tid")[cold], _col(rows, "pid")[cold])
    order = [sync_waits(rows, gpu_calls), *layers[:-1], owned_cold, layers[-1]]
    att = attribute(targets, order)
    return excess_only(att.ns, baseline), att


def attribute_gaps(gaps: list[ThreadGaps], layers: list[Layer]) -> tuple[np.ndarray, np.ndarray, Attribution]:
    """(owner index into `gaps` per gap target, ns per cause, raw attribution)."""
    owner = np.concatenate([np.full(len(g.start), i, np.int64) for i, g in enumerate(gaps)]) if gaps else np.zeros(0, np.int64)
    tid = np.array([gaps[i].tid for i in owner.tolist()], np.int64)
    pid = np.array([gaps[i].pid for i in owner.tolist()], np.int64)
    start = np.concatenate([g.start for g in gaps]) if gaps else np.zeros(0, np.int64)
    end = np.concatenate([g.end for g in gaps]) if gaps else np.zeros(0, np.int64)
    att = attribute(Targets(tid, pid, start.astype(np.int64), end.astype(np.int64)), layers)
    return owner, att.ns, att


# ---------------------------------------------------------------- findings


def severity(kind: str, explained_ns: int, lost_ns: int, window_ns: int, tail_ratio: float) -> str:
    """From explained time (share of the window) and the tail ratio — never from names."""
    window_ns = max(window_ns, 1)
    explained, lost = explained_ns / window_ns, lost_ns / window_ns
    steep = kind == "gap" or tail_ratio >= 5.0
    if explained >= 0.05 and steep:
        return "high"
    if (explained >= 0.005 and (kind == "gap" or tail_ratio >= 2.0)) or lost >= 0.05:
        return "medium"
    return "low"


def causes_of(att: Attributed, members: np.ndarray, names: Names) -> list[dict]:
    """The cause list of one finding: per kind, slow calls touched, ns, top blockers."""
    final = att.final[members]
    in_finding = np.isin(att.b_target, members)
    out = []
    for k, kind in enumerate(KINDS):
        ns = int(final[:, k].sum())
        if ns <= 0:
            continue
        sel = in_finding & (att.b_kind == k)
        out.append({"kind": kind, "slow_calls": int((final[:, k] > 0).sum()), "explained_ns": ns, "blockers": _blockers(att, sel, names)})
    return sorted(out, key=lambda c: (c["kind"] == "unknown", -c["explained_ns"], c["kind"]))


def _blockers(att: Attributed, sel: np.ndarray, names: Names) -> list[dict]:
    if not sel.any():
        return []
    tids, inv = np.unique(att.b_tid[sel], return_inverse=True)
    ns = np.bincount(inv, weights=att.b_ns[sel].astype(np.float64), minlength=len(tids))
    out = []
    for j in np.argsort(-ns, kind="stable")[:TOP_BLOCKERS].tolist():
        tid = int(tids[j])
        mine = inv == j
        pids = att.b_pid[sel][mine]
        pid = int(pids[pids > 0][0]) if (pids > 0).any() else names.pid_of(tid)
        cpus = att.b_cpu[sel][mine]
        entry = {"pid": pid, "tid": tid, "comm": names.comm(tid, pid), "ns": int(round(ns[j]))}
        if (cpus >= 0).any():
            c, w = np.unique(cpus[cpus >= 0], return_inverse=True)
            entry["cpu"] = int(c[np.argmax(np.bincount(w, weights=att.b_ns[sel][mine][cpus >= 0].astype(np.float64)))])
        if entry["ns"] > 0:
            out.append(entry)
    return out


def dominant(causes: list[dict]) -> str:
    return max(causes, key=lambda c: (c["explained_ns"], c["kind"] != "unknown"))["kind"] if causes else "unknown"


def explained(causes: list[dict]) -> int:
    return sum(c["explained_ns"] for c in causes if c["kind"] != "unknown")


def finding_id(kind: str, op: str, tid: int, cause: str) -> str:
    return f"{kind}:{op}:{tid}:{cause}"


def merge(findings: list[dict]) -> list[dict]:
    """Merge findings with the same (kind, op, tid, dominant cause): one finding per problem."""
    merged: dict[str, dict] = {}
    for f in findings:
        key = f["id"]
        if key not in merged:
            merged[key] = f
            continue
        m = merged[key]
        m["lost_ns"] += f["lost_ns"]
        m["slow_calls"] += f["slow_calls"]
        by_kind = {c["kind"]: c for c in m["causes"]}
        for c in f["causes"]:
            if c["kind"] in by_kind:
                t = by_kind[c["kind"]]
                t["slow_calls"] += c["slow_calls"]
                t["explained_ns"] += c["explained_ns"]
                bl = {b["tid"]: b for b in t["blockers"]}
                for b in c["blockers"]:
                    if b["tid"] in bl:
                        bl[b["tid"]]["ns"] += b["ns"]
                    else:
                        bl[b["tid"]] = dict(b)
                t["blockers"] = sorted(bl.values(), key=lambda b: (-b["ns"], b["tid"]))[:TOP_BLOCKERS]
            else:
                m["causes"].append(c)
    return list(merged.values())


def minor_limit_ns(window_ns: int) -> int:
    return int(max(MINOR_FLOOR_NS, MINOR_WINDOW_SHARE * window_ns))


def mark_minor(findings: list[dict], window_ns: int) -> list[dict]:
    """Flag findings whose lost time is below max(1 ms, 0.1 % of the window): too small to act on,
    so they get severity low and no fix (a 58 us total of sync waits in a 4 s run is not a problem).
    Applied after merge(), since merged findings add up."""
    limit = minor_limit_ns(window_ns)
    for f in findings:
        f["minor"] = f["lost_ns"] < limit
        if f["minor"]:
            f["severity"] = "low"
            f["recommendations"] = []
    return findings


def rank(findings: list[dict], min_severity: str) -> list[dict]:
    """Real findings by explained time, then the minor ones (never ranked among the real ones)."""
    limit = SEVERITY_RANK[min_severity]
    kept = [f for f in findings if SEVERITY_RANK[f["severity"]] <= limit]
    return sorted(kept, key=lambda f: (f.get("minor", False), -f["explained_ns"], -f["lost_ns"], SEVERITY_RANK[f["severity"]], f["id"]))
