"""What each MCP tool call did on the host: the server's process tree inside the call's window.

The window runs from the server reading the request to it writing the response
(the wire capture's own timestamps, `tool_calls.started_at/ended_at`). Inside
it, for the server and every descendant (fork events and `process_names`):

* syscalls: every one that *started* in the window, counted and timed (the
  footprint family emits each syscall the syscalls family does not), top
  syscalls by count in `summary`;
* files opened (open/openat/openat2 that succeeded; failures listed apart),
  endpoints connected (connect), children exec'd (argv), libraries mapped
  for the first time by that process (file mmaps), block I/O bytes, CUDA calls;
* CPU: on-CPU time from sched_switch — a thread is on CPU between switching
  in (switch-out ts + off-CPU duration) and its next switch-out, and, before
  its first / after its last switch, only as far as its own events prove it
  ran. sys = the part of that on-CPU time spent inside syscalls (syscall
  interval ∩ on-CPU), user = the rest. Exact to the scheduler's clock, not
  sampled; page faults and interrupts count as user.

Files are split three ways, so what the tool itself touched comes first:
shared objects go to `libraries` (full paths, from the opens of the loader and
dlopen; a mapping with no open in the window keeps the mmap's basename);
what a runtime opens on its own (the loader's cache, locale and gconv files,
Python imports and bytecode, node_modules, /proc/self, /dev/null) is grouped
in `runtime` and counted; the rest, the tool's own, stays in `files`.

A call alone on its server in its window is `'exclusive'`. Overlapping calls
are told apart by thread where the server's threads allow it: when every call
of an overlapping cluster has a known handler thread (the server thread that
wrote its response) and no two share one (a thread-per-request server), each
call gets only its handler thread's events and the processes that thread
forked in the window: `'thread'`. Otherwise (an event loop or a writer thread
answering every call) each gets the whole tree's activity in its window:
`'shared'`.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from whyprobe.syscalls_x86_64 import syscall_name
from whyprobe.events import Source

HOST_SCHED_SWITCH, HOST_EXEC, HOST_FORK = 1, 5, 7
NR_READ_OPEN = (2, 257, 437)
NR_CONNECT = 42
NR_MMAP = 9
NR_EXECVE = (59, 322)
TOP_SYSCALLS = 8

_SHARED_OBJECT = re.compile(r"\.so(\.\d+)*$")
# (group, path prefixes, path fragments): files a runtime opens whatever the tool does.
RUNTIME_GROUPS = (
    ("loader", ("/etc/ld.so.cache", "/etc/ld.so.preload"), ("/glibc-hwcaps/",)),
    ("locale", ("/usr/lib/locale/", "/usr/share/locale/", "/usr/share/i18n/", "/usr/share/zoneinfo/", "/etc/localtime"),
     ("/gconv/",)),
    ("python", (), ("/__pycache__/", "/site-packages/", "/dist-packages/", "/pyvenv.cfg")),
    ("node", (), ("/node_modules/",)),
    ("process", ("/proc/self/", "/proc/thread-self/", "/sys/devices/system/cpu/", "/sys/fs/cgroup/", "/dev/null",
                 "/dev/urandom", "/dev/random", "/dev/tty", "/dev/pts/"), ()),
)
RUNTIME_GROUP_NAMES = tuple(g for g, _, _ in RUNTIME_GROUPS)
_PYTHON_LIB = re.compile(r"/lib(64)?/python3[.\d]*/")


@dataclass
class Footprint:
    call_id: int
    tool_name: str
    server_pid: int
    started_at: int
    ended_at: int
    is_error: bool
    attribution: str = "exclusive"
    cpu_user_ns: int = 0
    cpu_sys_ns: int = 0
    syscalls: int = 0
    syscall_ns: int = 0
    files: list[str] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    libraries: list[str] = field(default_factory=list)
    block_bytes: int = 0
    cuda_calls: int = 0
    top_syscalls: dict[str, list[int]] = field(default_factory=dict)  # name -> [count, ns]
    files_failed: list[str] = field(default_factory=list)
    runtime: dict[str, list[str]] = field(default_factory=dict)  # group -> paths a runtime opened (RUNTIME_GROUPS)
    handler_tid: int = 0  # the server thread that wrote the response (0: unknown)
    pids: list[int] = field(default_factory=list)
    event_ids: list[int] = field(default_factory=list)

    @property
    def duration(self) -> int:
        return max(self.ended_at - self.started_at, 0)

    def summary(self) -> dict[str, Any]:
        return {"top_syscalls": self.top_syscalls, "files_failed": self.files_failed, "pids": self.pids,
                "handler_tid": self.handler_tid, "runtime_files": self.runtime}

    def to_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id, "tool_name": self.tool_name, "server_pid": self.server_pid,
            "started_at": self.started_at, "ended_at": self.ended_at, "duration_ns": self.duration,
            "is_error": self.is_error, "attribution": self.attribution,
            "cpu_user_ns": self.cpu_user_ns, "cpu_sys_ns": self.cpu_sys_ns,
            "syscalls": self.syscalls, "syscall_ns": self.syscall_ns, "top_syscalls": self.top_syscalls,
            "files": self.files, "files_failed": self.files_failed,
            "runtime": {g: len(paths) for g, paths in self.runtime.items()}, "runtime_files": self.runtime,
            "endpoints": self.endpoints,
            "children": self.children, "libraries": self.libraries, "block_bytes": self.block_bytes,
            "cuda_calls": self.cuda_calls, "pids": self.pids, "handler_tid": self.handler_tid,
        }


def file_group(path: str) -> str:
    """'library' for a shared object, a RUNTIME_GROUPS name for runtime noise, '' for the tool's own."""
    if _SHARED_OBJECT.search(os.path.basename(path)):
        return "library"
    for group, prefixes, fragments in RUNTIME_GROUPS:
        if path.startswith(prefixes) or any(f in path for f in fragments):
            return group
    if path.endswith(".pyc") or _PYTHON_LIB.search(path):
        return "python"
    return ""


def _split_files(call: "Footprint", opened: list[str], failed: list[str], mapped: list[str]) -> None:
    """files / files_failed (the tool's own), libraries (full paths first), runtime (grouped)."""
    runtime: dict[str, list[str]] = {}
    libraries: list[str] = []
    for path in dict.fromkeys(opened):
        group = file_group(path)
        if group == "library":
            libraries.append(path)
        else:
            (runtime.setdefault(group, []) if group else call.files).append(path)
    for path in dict.fromkeys(failed):
        group = file_group(path)
        if group == "library":
            group = "loader"  # the loader's (or an import's) search path, tried in turn
        (runtime.setdefault(group, []) if group else call.files_failed).append(path)
    # A mapping of a file opened in the window is that file (the loader opens a symlink, the
    # mmap names its target: libsqlite3.so.0 -> libsqlite3.so.0.8.6).
    named = {os.path.basename(q) for p in dict.fromkeys(opened) for q in (p, os.path.realpath(p))}
    call.libraries = list(dict.fromkeys(libraries + [m for m in mapped if os.path.basename(m) not in named]))
    call.runtime = {g: list(dict.fromkeys(runtime[g])) for g in RUNTIME_GROUP_NAMES if g in runtime}


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


def _tree(conn: sqlite3.Connection, root: int) -> set[int]:
    """root and its descendants, from fork events and process_names parents."""
    children: dict[int, set[int]] = {}
    for parent, child in conn.execute(
        f"SELECT pid, arg0 FROM events WHERE source = {int(Source.HOST)} AND op = {HOST_FORK}"
    ):
        children.setdefault(parent, set()).add(child)
    for pid, ppid in conn.execute("SELECT pid, ppid FROM process_names WHERE ppid != 0"):
        children.setdefault(ppid, set()).add(pid)
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo += children.get(p, ())
    return out


def _on_cpu(switches: Sequence[tuple[int, int]], first: int, last: int) -> list[tuple[int, int]]:
    """On-CPU intervals of one thread from its sched_switch (switch-out ts, off-CPU ns), bounded
    before the first switch-out by `first` and after the last switch-in by `last` (its own events)."""
    if not switches:
        return [(first, last)] if last > first else []
    out = []
    start = min(first, switches[0][0])
    for ts, off in switches:
        if ts > start:
            out.append((start, ts))
        start = ts + off
    if last > start:
        out.append((start, last))
    return out


def _switches_around(conn: sqlite3.Connection, tid: int, a: int, b: int, inside: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The thread's switches overlapping [a, b], plus the one before (when it last switched in) and
    the first after (when it next switched out), so a thread running across an edge counts."""
    sched = f"source = {int(Source.HOST)} AND op = {HOST_SCHED_SWITCH} AND tid = ?"
    before = conn.execute(f"SELECT timestamp, duration FROM events WHERE {sched} AND timestamp + duration < ? ORDER BY timestamp DESC LIMIT 1", (tid, a)).fetchone()
    after = conn.execute(f"SELECT timestamp, duration FROM events WHERE {sched} AND timestamp > ? ORDER BY timestamp LIMIT 1", (tid, b)).fetchone()
    return ([tuple(before)] if before else []) + inside + ([tuple(after)] if after else [])


def _inside(intervals: list[tuple[int, int]], a: int, b: int) -> int:
    return sum(_overlap(a, b, s, e) for s, e in intervals)


def _thread_scope(conn: sqlite3.Connection, call: Footprint) -> tuple[str, tuple, set[int]]:
    """SQL condition, its parameters and the pids of a 'thread' call: its handler thread and the
    trees of the processes that thread forked in the window."""
    forked = [r[0] for r in conn.execute(
        f"SELECT arg0 FROM events WHERE source = {int(Source.HOST)} AND op = {HOST_FORK} AND pid = ? AND tid = ? "
        "AND timestamp BETWEEN ? AND ?", (call.server_pid, call.handler_tid, call.started_at, call.ended_at))]
    children = set().union(*(_tree(conn, c) for c in forked)) if forked else set()
    marks = ",".join("?" * len(children))
    cond = "(pid = ? AND tid = ?)" + (f" OR pid IN ({marks})" if children else "")
    return f"({cond})", (call.server_pid, call.handler_tid, *children), {call.server_pid, *children}


def footprint(conn: sqlite3.Connection, call: Footprint, seen_libs: dict[int, set[str]]) -> Footprint:
    """Fill `call` from the events of its server's tree (its handler thread's share, for
    attribution 'thread') inside its window."""
    if not call.server_pid:
        return call
    if call.attribution == "thread":
        scope, params, pids = _thread_scope(conn, call)
    else:
        pids = _tree(conn, call.server_pid)
        scope, params = f"pid IN ({','.join('?' * len(pids))})", tuple(pids)
    call.pids = sorted(pids)
    a, b = call.started_at, call.ended_at
    rows = conn.execute(
        f"SELECT id, timestamp, pid, tid, source, op, duration, arg0, ret_code, detail FROM events "
        f"WHERE {scope} AND timestamp <= ? AND timestamp + duration >= ? ORDER BY timestamp",
        (*params, b, a),
    ).fetchall()
    switches: dict[int, list[tuple[int, int]]] = {}
    syscalls: dict[int, list[tuple[int, int]]] = {}
    bounds: dict[int, list[int]] = {}
    counts: Counter[int] = Counter()
    times: Counter[int] = Counter()
    execs: list[str] = []  # argv from the proc family's exec events
    execve_paths: list[str] = []  # the syscall's path, when there is no proc family
    opened: list[str] = []
    failed: list[str] = []
    mapped: list[str] = []  # basenames: the mmap event names only the file
    for eid, ts, pid, tid, source, op, dur, arg0, ret, detail in rows:
        if source == Source.HOST and op == HOST_SCHED_SWITCH:
            switches.setdefault(tid, []).append((ts, dur))
            continue
        bound = bounds.setdefault(tid, [ts, ts + dur])
        bound[0], bound[1] = min(bound[0], ts), max(bound[1], ts + dur)
        if not a <= ts <= b:
            continue
        call.event_ids.append(eid)
        if source == Source.SYSCALL:
            syscalls.setdefault(tid, []).append((ts, ts + dur))
            counts[op] += 1
            times[op] += min(ts + dur, b) - ts  # a read still blocked at the response belongs to the next call
            if op in NR_READ_OPEN and detail:
                (opened if ret >= 0 else failed).append(detail)
            elif op == NR_CONNECT and detail:
                call.endpoints.append(detail)
            elif op == NR_MMAP and detail and ret >= 0 and detail not in seen_libs.setdefault(pid, set()):
                seen_libs[pid].add(detail)
                mapped.append(detail)
            elif op in NR_EXECVE and detail and ret >= 0:
                execve_paths.append(detail)
        elif source == Source.HOST and op == HOST_EXEC and detail:
            execs.append(detail)
        elif source == Source.IO:
            call.block_bytes += int(arg0)
        elif source in (Source.CUDA, Source.DRIVER):
            call.cuda_calls += 1
    call.children = execs or list(dict.fromkeys(execve_paths))
    for tid in set(switches) | set(bounds):
        first, last = bounds.get(tid, (b, a))
        oncpu = _on_cpu(_switches_around(conn, tid, a, b, switches.get(tid, [])), first, last)
        total = _inside(oncpu, a, b)
        sys_ns = sum(_inside(oncpu, max(s, a), min(e, b)) for s, e in syscalls.get(tid, []) if e > a and s < b)
        call.cpu_sys_ns += min(sys_ns, total)
        call.cpu_user_ns += total - min(sys_ns, total)
    call.syscalls = sum(counts.values())
    call.syscall_ns = sum(times.values())
    call.top_syscalls = {syscall_name(nr): [n, int(times[nr])] for nr, n in counts.most_common(TOP_SYSCALLS)}
    _split_files(call, opened, failed, mapped)
    call.endpoints = list(dict.fromkeys(call.endpoints))
    return call


def _clusters(calls: list[Footprint]) -> list[list[Footprint]]:
    """Calls of one server grouped by overlapping windows, in start order."""
    by_server: dict[int, list[Footprint]] = {}
    for c in calls:
        by_server.setdefault(c.server_pid, []).append(c)
    out: list[list[Footprint]] = []
    for group in by_server.values():
        group.sort(key=lambda c: c.started_at)
        end = None
        for c in group:
            if end is None or c.started_at >= end:
                out.append([])
                end = c.ended_at
            out[-1].append(c)
            end = max(end, c.ended_at)
    return out


def mark_attribution(calls: list[Footprint]) -> None:
    """exclusive | thread | shared for each call (see the module docstring)."""
    for cluster in _clusters(calls):
        if len(cluster) == 1:
            continue
        tids = [c.handler_tid for c in cluster]
        by_thread = all(tids) and len(set(tids)) == len(tids)
        for c in cluster:
            c.attribution = "thread" if by_thread else "shared"


def analyze(conn: sqlite3.Connection, call_ids: Iterable[int] | None = None,
            handler_tids: Mapping[int, int] | None = None) -> list[Footprint]:
    """Footprints of the given tool_calls rows (all when None), in start order. handler_tids:
    tool_calls.id -> the server thread that wrote the response (from the wire capture); calls
    without one are never attributed per thread."""
    sql = "SELECT id, tool_name, server_pid, started_at, ended_at, is_error FROM tool_calls"
    ids = list(call_ids) if call_ids is not None else None
    rows = conn.execute(sql + " ORDER BY started_at").fetchall()
    tids = handler_tids or {}
    calls = [Footprint(r[0], r[1], r[2], r[3], r[4], bool(r[5]), handler_tid=tids.get(r[0], 0))
             for r in rows if ids is None or r[0] in set(ids)]
    mark_attribution(calls)
    seen_libs: dict[int, set[str]] = {}
    for pid, detail in conn.execute(
        f"SELECT pid, detail FROM events WHERE source = {int(Source.SYSCALL)} AND op = {NR_MMAP} AND detail IS NOT NULL "
        "AND timestamp < COALESCE((SELECT MIN(started_at) FROM tool_calls), 0)"
    ):
        seen_libs.setdefault(pid, set()).add(detail)
    for c in calls:
        footprint(conn, c, seen_libs)
    return calls


def store(conn: sqlite3.Connection, calls: Sequence[Footprint]) -> None:
    """Write the footprint columns of tool_calls and the tool_call_events links."""
    with conn:
        conn.executemany(
            "UPDATE tool_calls SET attribution = ?, cpu_user_ns = ?, cpu_sys_ns = ?, syscalls = ?, syscall_ns = ?, files = ?, "
            "endpoints = ?, children = ?, libraries = ?, block_bytes = ?, cuda_calls = ?, summary = ? WHERE id = ?",
            [
                (c.attribution, c.cpu_user_ns, c.cpu_sys_ns, c.syscalls, c.syscall_ns, json.dumps(c.files), json.dumps(c.endpoints),
                 json.dumps(c.children), json.dumps(c.libraries), c.block_bytes, c.cuda_calls, json.dumps(c.summary()), c.call_id)
                for c in calls
            ],
        )
        conn.executemany(
            "INSERT OR IGNORE INTO tool_call_events(call_id, event_id) VALUES (?, ?)",
            [(c.call_id, e) for c in calls for e in c.event_ids],
        )


def analyze_and_store(path: Path, handler_tids: Mapping[int, int]) -> list[Footprint]:
    """Footprints of a finished capture's tool calls (tool_calls.id -> handler thread), written
    back into its database."""
    conn = sqlite3.connect(str(path))
    try:
        calls = analyze(conn, list(handler_tids), handler_tids)
        store(conn, calls)
    finally:
        conn.close()
    return calls
