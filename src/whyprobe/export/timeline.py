"""A trace as tracks and slices: the shared model behind the Perfetto and Chrome exports.

Tracks: one per process and thread (named from process_names/thread_names),
plus child tracks per thread for off-CPU, block I/O, syscalls ...; MCP tool
calls on a child track of the server process; findings on a global track.
CUDA and driver calls sit on the thread track itself.

Viewers need slices on one track to nest properly. Off-CPU intervals overlap
a CUDA call partially, block requests overlap each other, so each category
has its own track and overlapping slices spill into extra lanes ("block I/O #2").

Merged fleet traces (events.node with several values) give each node its own
pid space: the exported pid is `node_index << 22 | pid` (Linux pids < 2**22),
and the process name says which node and real pid it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from whyprobe.events import F_PREEMPTED, Source, op_name
from whyprobe.store.kernels import KERNEL_LAUNCH, hex_handle, kernel_names
from whyprobe.store.reader import TraceDB

__all__ = ["Track", "Slice", "Timeline", "build_timeline", "category_of"]

ScalarArg = int | float | str | bool

_CATEGORY = {
    Source.CUDA: "cuda",
    Source.DRIVER: "cuda",
    Source.IO: "block I/O",
    Source.TCP: "tcp",
    Source.NET: "net",
    Source.SYSCALL: "syscalls",
    Source.CUSTOM: "uprobes",
}
_THREAD_TRACK_CATEGORY = "cuda"  # lives on the thread track itself, not a child track
_PID_BITS = 22


@dataclass
class Track:
    uuid: int
    name: str
    pid: int = 0
    tid: int = 0
    kind: str = "sub"  # process | thread | sub | global
    parent: int = 0  # parent track uuid, 0 = none


@dataclass
class Slice:
    track: int
    ts: int  # unix ns
    dur: int  # ns; 0 = instant
    name: str
    category: str
    args: dict[str, ScalarArg] = field(default_factory=dict)


@dataclass
class Timeline:
    tracks: list[Track]
    slices: list[Slice]
    counts: dict[str, int]  # category → slices + instants exported


def category_of(source: int, op: int) -> str:
    """The export category of an event: cuda, off-CPU, host, block I/O, syscalls, ..."""
    if source == Source.HOST:
        return "off-CPU" if op == 1 else "host"
    return _CATEGORY.get(source, "other")  # type: ignore[call-overload]


class _Tracks:
    """Allocates tracks on demand; parents always precede children in `order`."""

    def __init__(self, process_names: dict[int, str], thread_names: dict[int, str], node_names: list[str]) -> None:
        self.process_names = process_names
        self.thread_names = thread_names
        self.node_names = node_names
        self.by_key: dict[tuple, Track] = {}
        self.order: list[Track] = []
        self.lanes: dict[tuple, list[list[int]]] = {}  # per (track, category): per lane, a stack of open slice ends

    def _add(self, key: tuple, track: Track) -> Track:
        track.uuid = len(self.order) + 1
        self.by_key[key] = track
        self.order.append(track)
        return track

    def export_pid(self, node: int, pid: int) -> int:
        return (node << _PID_BITS) | pid if len(self.node_names) > 1 else pid

    def process(self, node: int, pid: int) -> Track:
        key = ("process", node, pid)
        if key not in self.by_key:
            name = self.process_names.get(pid, f"pid {pid}")
            if len(self.node_names) > 1:
                name = f"{self.node_names[node] or 'node?'}: {name} (pid {pid})"
            self._add(key, Track(0, name, pid=self.export_pid(node, pid), kind="process"))
        return self.by_key[key]

    def thread(self, node: int, pid: int, tid: int) -> Track:
        key = ("thread", node, tid)
        if key not in self.by_key:
            proc = self.process(node, pid)
            name = self.thread_names.get(tid) or self.process_names.get(tid) or self.process_names.get(pid, "")
            name = f"{name} {tid}" if name else f"tid {tid}"
            self._add(key, Track(0, name, pid=proc.pid, tid=self.export_pid(node, tid), kind="thread", parent=proc.uuid))
        return self.by_key[key]

    def lane(self, owner: Track, category: str, ts: int, dur: int) -> Track:
        """The first lane of owner's `category` where [ts, ts+dur) nests properly (calls come in ts order).

        A runtime call wrapping its driver call nests on one lane; partial overlaps take the next lane.
        """
        lanes = self.lanes.setdefault((owner.uuid, category), [])
        index = 0
        if dur:
            end = ts + dur
            for index, stack in enumerate(lanes):
                while stack and stack[-1] <= ts:
                    stack.pop()
                if not stack or stack[-1] >= end:
                    stack.append(end)
                    break
            else:
                index = len(lanes)
                lanes.append([end])
        if index == 0 and owner.kind == "thread" and category == _THREAD_TRACK_CATEGORY:
            return owner
        key = ("sub", owner.uuid, category, index)
        if key not in self.by_key:
            name = category if index == 0 else f"{category} #{index + 1}"
            self._add(key, Track(0, name, pid=owner.pid, tid=owner.tid, kind="sub", parent=owner.uuid))
        return self.by_key[key]

    def global_track(self, name: str) -> Track:
        key = ("global", name)
        if key not in self.by_key:
            self._add(key, Track(0, name, kind="global"))
        return self.by_key[key]


def build_timeline(db: TraceDB, *, min_duration_ns: int = 0) -> Timeline:
    """Every event (at least min_duration_ns long, or instant), findings and MCP tool calls."""
    events = db.load_events()
    if min_duration_ns > 0:
        events = events[(events["duration"] >= min_duration_ns) | (events["duration"] == 0)]
    node_names, node_index = _nodes(db, events)
    process_names = _names(db, "SELECT pid, name FROM process_names", "process_names")
    thread_names = _names(db, "SELECT tid, comm FROM thread_names", "thread_names")
    tracks = _Tracks(process_names, thread_names, node_names)
    names = db.op_names()
    kernels = kernel_names(db)
    slices: list[Slice] = []
    counts: dict[str, int] = {}
    whyprobe = db.flavor == "whyprobe"
    fields = ("id", "timestamp", "pid", "tid", "source", "op", "duration", "arg0", "arg1", "arg2", "aux", "ret_code", "cpu", "stack_hash", "flags")
    for row, node in zip(zip(*(events[f].tolist() for f in fields)), node_index.tolist()):
        (eid, ts, pid, tid, source, op, dur, arg0, arg1, arg2, aux, ret, cpu, stack_hash, flags) = row
        category = category_of(source, op)
        owner = tracks.thread(node, pid, tid)
        track = tracks.lane(owner, category, ts, dur)
        name = names.get((source, op)) or op_name(source, op)
        args: dict[str, ScalarArg] = {"event_id": eid}
        if category == "off-CPU" and whyprobe:
            preempted = bool(flags & F_PREEMPTED)
            waker = 0 if preempted else aux  # preempted rows carry the preemptor's run time in aux
            args.update(
                prev_state=arg0,
                preempted=preempted,
                preemptor_tid=arg1,
                preemptor=_comm(arg1, thread_names, process_names),
                waker_tid=waker,
                waker_pid=ret,
                waker=_comm(waker, thread_names, process_names) if waker else "unknown",
                cpu=arg2,
            )
        elif category == "block I/O":
            args.update(bytes=arg0, device=arg1, sector=arg2, ret_code=ret)
        else:
            args.update(arg0=arg0, arg1=arg1, arg2=arg2, ret_code=ret)
            if cpu >= 0:
                args["cpu"] = cpu
            if (source, op) in KERNEL_LAUNCH:
                args["kernel"] = kernels.get((pid, arg0)) or hex_handle(arg0)
        if stack_hash:
            args["stack_hash"] = f"{stack_hash & 0xFFFFFFFFFFFFFFFF:#018x}"
        slices.append(Slice(track.uuid, ts, dur, name, category, args))
        counts[category] = counts.get(category, 0) + 1
    for item in _findings(db, tracks) + _tool_calls(db, tracks):
        slices.append(item)
        counts[item.category] = counts.get(item.category, 0) + 1
    return Timeline(tracks.order, slices, counts)


def _names(db: TraceDB, sql: str, table: str) -> dict[int, str]:
    return dict(db.conn.execute(sql).fetchall()) if db.has(table) else {}


def _comm(tid: int, thread_names: dict[int, str], process_names: dict[int, str]) -> str:
    return thread_names.get(tid) or process_names.get(tid) or ""


def _nodes(db: TraceDB, events: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Distinct node names and each event's index into them (all zeros for one-node traces)."""
    index = np.zeros(len(events), dtype=np.int64)
    if not db.has("events", "node") or len(events) == 0:
        return [""], index
    pairs = db.conn.execute("SELECT rowid, COALESCE(node, '') FROM events").fetchall()
    names = sorted({node for _, node in pairs})
    if len(names) <= 1:
        return names or [""], index
    lookup = {name: i for i, name in enumerate(names)}
    rowids = np.array([r for r, _ in pairs], dtype=np.int64)
    node_of_row = np.array([lookup[n] for _, n in pairs], dtype=np.int64)
    order = np.argsort(rowids)
    positions = np.searchsorted(rowids[order], events["id"])
    return names, node_of_row[order][positions]


def _findings(db: TraceDB, tracks: _Tracks) -> list[Slice]:
    out: list[Slice] = []
    if db.has("findings"):
        rows = db.conn.execute(
            "SELECT id, window_start, window_end, kind, severity, source, op, tid, lost_ns, summary FROM findings ORDER BY id"
        ).fetchall()
        for fid, start, end, kind, severity, source, op, tid, lost_ns, summary in rows:
            track = tracks.global_track("whyprobe findings")
            args = {"finding_id": fid, "kind": kind, "severity": severity, "source": source, "op": op, "tid": tid,
                    "lost_ns": lost_ns, "window_end": end, "summary": summary}
            out.append(Slice(track.uuid, start, 0, f"{severity.upper()}: {summary}", "finding", args))
    for table in ("causal_chains", "ingero_causal_chains"):
        if db.has(table) and db.has(table, "detected_at"):
            rows = db.conn.execute(
                f"SELECT id, detected_at, severity, summary, root_cause, recommendations FROM {table} ORDER BY detected_at"
            ).fetchall()
            track = tracks.global_track("Ingero causal chains")
            for cid, at, severity, summary, root_cause, recs in rows:
                args = {"chain_id": str(cid), "severity": severity, "root_cause": root_cause, "recommendations": recs}
                out.append(Slice(track.uuid, at, 0, f"{severity}: {summary}", "finding", args))
    return out


_TOOL_CALL_COLUMNS = (
    "id", "server_pid", "tool_name", "started_at", "duration", "is_error", "cpu_user_ns", "cpu_sys_ns",
    "syscalls", "syscall_ns", "files", "endpoints", "children", "block_bytes", "cuda_calls", "summary",
)


def _tool_calls(db: TraceDB, tracks: _Tracks) -> list[Slice]:
    if not db.has("tool_calls"):
        return []
    rows = db.conn.execute(f"SELECT {', '.join(_TOOL_CALL_COLUMNS)} FROM tool_calls ORDER BY started_at").fetchall()
    out = []
    for row in rows:
        call = dict(zip(_TOOL_CALL_COLUMNS, row))
        owner = tracks.process(0, call["server_pid"])
        track = tracks.lane(owner, "MCP tool calls", call["started_at"], call["duration"])
        args: dict[str, ScalarArg] = {"call_id": call["id"], "is_error": bool(call["is_error"])}
        for key in ("cpu_user_ns", "cpu_sys_ns", "syscalls", "syscall_ns", "block_bytes", "cuda_calls"):
            args[key] = call[key]
        for key in ("files", "endpoints", "children"):
            args[key] = _compact_json(call[key])
        args["summary"] = call["summary"]
        out.append(Slice(track.uuid, call["started_at"], call["duration"], call["tool_name"], "mcp", args))
    return out


def _compact_json(text: str) -> str:
    """A JSON list column as compact text (annotations are scalars)."""
    try:
        return json.dumps(json.loads(text), separators=(",", ":"))
    except (TypeError, ValueError):
        return str(text)
