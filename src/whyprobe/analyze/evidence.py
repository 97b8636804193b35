"""Interval attribution: which evidence covers which part of a target interval.

A *target* is a slow call or a GPU-idle gap on one thread. A *layer* is one
kind of evidence (preempted intervals, block I/O in flight, ...) keyed by the
thread (or process) it belongs to. Layers are given in priority order: a
nanosecond of a target covered by several layers counts once, for the first
of them; a nanosecond covered by none stays `unknown`. Everything is numpy
(sort + searchsorted + one cumulative sweep); the only Python loop is over the
distinct threads that own targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KINDS = ("sync_wait", "off_cpu", "io", "network", "memory", "syscall", "cold_start", "on_cpu", "unknown")
KIND_INDEX = {k: i for i, k in enumerate(KINDS)}
UNKNOWN = KIND_INDEX["unknown"]


@dataclass
class Layer:
    """Evidence intervals of one kind, matched to targets by `key` (a tid, or a pid when by_pid)."""

    kind: str
    key: np.ndarray
    start: np.ndarray
    end: np.ndarray
    blocker_tid: np.ndarray
    blocker_pid: np.ndarray
    cpu: np.ndarray
    by_pid: bool = False

    def __post_init__(self) -> None:
        order = np.lexsort((self.start, self.key))
        for name in ("key", "start", "end", "blocker_tid", "blocker_pid", "cpu"):
            setattr(self, name, np.asarray(getattr(self, name), np.int64)[order])


@dataclass
class Owned:
    """Evidence that covers whole targets (cold start, a sync waiting on earlier GPU work)."""

    kind: str
    target: np.ndarray
    blocker_tid: np.ndarray
    blocker_pid: np.ndarray


@dataclass
class Targets:
    tid: np.ndarray
    pid: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def __len__(self) -> int:
        return len(self.tid)


@dataclass
class Attribution:
    """ns[i, k]: ns of target i attributed to KINDS[k] (row sums = target duration).

    The pair_* arrays list every (target, evidence) overlap that names a
    blocker, with its raw overlap; raw_total[i, k] is all raw overlap of kind k.
    """

    ns: np.ndarray
    raw_total: np.ndarray
    pair_target: np.ndarray
    pair_kind: np.ndarray
    pair_tid: np.ndarray
    pair_pid: np.ndarray
    pair_cpu: np.ndarray
    pair_raw: np.ndarray


def _ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, index) for every index in [lo[row], hi[row])."""
    n = np.maximum(hi - lo, 0)
    total = int(n.sum())
    rows = np.repeat(np.arange(len(lo)), n)
    idx = np.arange(total) - np.repeat(np.cumsum(n) - n, n) + np.repeat(lo, n)
    return rows, idx


def overlaps(layer: Layer, targets: Targets) -> tuple[np.ndarray, np.ndarray]:
    """Indices (target, evidence) of every positive overlap between targets and the layer."""
    keys = targets.pid if layer.by_pid else targets.tid
    out_t, out_e = [], []
    for k in np.unique(keys).tolist():
        a, b = np.searchsorted(layer.key, k, "left"), np.searchsorted(layer.key, k, "right")
        if a == b:
            continue
        ti = np.flatnonzero(keys == k)
        # Prefix max of ends: everything before lo ends at or before the target starts.
        reach = np.maximum.accumulate(layer.end[a:b])
        lo = np.searchsorted(reach, targets.start[ti], "right") + a
        hi = np.searchsorted(layer.start[a:b], targets.end[ti], "left") + a
        rows, ev = _ranges(lo, hi)
        t = ti[rows]
        keep = (layer.end[ev] > targets.start[t]) & (layer.start[ev] < targets.end[t])
        out_t.append(t[keep])
        out_e.append(ev[keep])
    if not out_t:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_t), np.concatenate(out_e)


def _sweep(n_targets: int, t: np.ndarray, s: np.ndarray, e: np.ndarray, prio: np.ndarray, n_prio: int) -> np.ndarray:
    """covered[i, p]: ns of target i whose highest-priority covering evidence is priority p."""
    out = np.zeros((n_targets, n_prio + 1), np.int64)
    m = len(t)
    if m == 0:
        return out[:, :n_prio]
    bt = np.concatenate((t, t))
    bx = np.concatenate((s, e))
    bp = np.concatenate((prio, prio))
    bd = np.concatenate((np.ones(m, np.int32), -np.ones(m, np.int32)))
    order = np.lexsort((bx, bt))
    bt, bx, bp, bd = bt[order], bx[order], bp[order], bd[order]
    delta = np.zeros((2 * m, n_prio), np.int32)
    delta[np.arange(2 * m), bp] = bd
    active = np.cumsum(delta, axis=0) > 0
    seg = np.zeros(2 * m, np.int64)
    same = bt[1:] == bt[:-1]
    seg[:-1] = np.where(same, bx[1:] - bx[:-1], 0)
    top = np.where(active.any(axis=1), active.argmax(axis=1), n_prio)
    flat = np.bincount(bt * (n_prio + 1) + top, weights=seg.astype(np.float64), minlength=n_targets * (n_prio + 1))
    out[:] = np.rint(flat).astype(np.int64).reshape(n_targets, n_prio + 1)
    return out[:, :n_prio]


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def attribute(targets: Targets, layers: list[Layer | Owned]) -> Attribution:
    """Split every target's interval between the layers (in priority order) and `unknown`."""
    n = len(targets)
    ts, te = targets.start, targets.end
    parts_t, parts_s, parts_e, parts_p = [], [], [], []
    bt_, bk_, btid_, bpid_, bcpu_, braw_ = [], [], [], [], [], []
    for p, layer in enumerate(layers):
        kind = KIND_INDEX[layer.kind]
        if isinstance(layer, Owned):
            t = np.asarray(layer.target, np.int64)
            s, e = ts[t], te[t]
            btid, bpid, cpu = np.asarray(layer.blocker_tid, np.int64), np.asarray(layer.blocker_pid, np.int64), np.full(len(t), -1, np.int64)
        else:
            t, ev = overlaps(layer, targets)
            s = np.maximum(layer.start[ev], ts[t])
            e = np.minimum(layer.end[ev], te[t])
            btid, bpid, cpu = layer.blocker_tid[ev], layer.blocker_pid[ev], layer.cpu[ev]
        keep = e > s
        t, s, e, btid, bpid, cpu = t[keep], s[keep], e[keep], btid[keep], bpid[keep], cpu[keep]
        parts_t.append(t)
        parts_s.append(s)
        parts_e.append(e)
        parts_p.append(np.full(len(t), p, np.int64))
        bt_.append(t)
        bk_.append(np.full(len(t), kind, np.int64))
        btid_.append(btid)
        bpid_.append(bpid)
        bcpu_.append(cpu)
        braw_.append(e - s)
    covered = _sweep(n, _cat(parts_t), _cat(parts_s), _cat(parts_e), _cat(parts_p), len(layers))
    ns = np.zeros((n, len(KINDS)), np.int64)
    for p, layer in enumerate(layers):
        ns[:, KIND_INDEX[layer.kind]] += covered[:, p]
    ns[:, UNKNOWN] = (te - ts) - ns.sum(axis=1)
    pt, pk, raw = _cat(bt_), _cat(bk_), _cat(braw_)
    raw_total = np.zeros((n, len(KINDS)), np.int64)
    np.add.at(raw_total, (pt, pk), raw)
    named = _cat(btid_) > 0
    return Attribution(ns, raw_total, pt[named], pk[named], _cat(btid_)[named], _cat(bpid_)[named], _cat(bcpu_)[named], raw[named])


# When a slow call's evidence is deducted down to its excess over the typical
# call, the typical part is taken first from what a typical call also has.
_BASELINE_ORDER = [KIND_INDEX[k] for k in ("on_cpu", "unknown", "cold_start", "off_cpu", "syscall", "network", "memory", "io", "sync_wait")]


def excess_only(ns: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Remove `baseline` ns from each row (never below zero), least specific causes first."""
    out = ns.copy()
    left = np.minimum(np.maximum(baseline, 0), out.sum(axis=1))
    for k in _BASELINE_ORDER:
        take = np.minimum(left, out[:, k])
        out[:, k] -= take
        left = left - take
    return out


def blocker_shares(att: Attribution, final_ns: np.ndarray) -> np.ndarray:
    """Each named pair's share of its target's final ns for its kind (rows of att.pair_*)."""
    if not len(att.pair_target):
        return np.zeros(0, np.int64)
    denom = att.raw_total[att.pair_target, att.pair_kind]
    final = final_ns[att.pair_target, att.pair_kind]
    return (final * (att.pair_raw / np.maximum(denom, 1))).astype(np.int64)
