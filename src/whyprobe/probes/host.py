"""Host evidence families: sched (off-CPU), proc (lifecycle), block (I/O), net, syscalls.

Each family loads one object (bpf/<name>.bpf.c) into the shared ProbeSet.
Record semantics are documented at the top of each .bpf.c; the ones other
modules rely on:

* HOST/sched_switch: ts = switch-out, duration = off-CPU ns, arg0 = prev_state,
  arg1 = tid that took the CPU, arg2 = CPU, ret = waker pid, F_PREEMPTED =
  still runnable when switched out; aux = waker tid when blocked, ns the arg1
  thread ran during the interval when preempted (0 unknown in both).
* HOST/process_fork|exec|exit: fork arg0 = child pid; exec payloads PATH and
  ARGV; exit ret = exit status (-signal when killed), arg0 = raw exit_code.
* IO/block_*: ts = issue, duration = issue->completion, arg0 = bytes,
  arg1 = dev_t, arg2 = sector, aux = queued ns, pid/tid/comm = submitter.
* TCP/tcp_retransmit: arg0 = state, arg1 = sport, arg2 = dport, aux = family;
  pid/tid = the socket's traced owner when F_SOCK_OWNER.
* HOST/direct_reclaim|memcg_reclaim|compaction: stall intervals of traced
  threads; HOST/oom_kill: arg0 = victim pid (bpf/mem.bpf.c).
* NET/net_send|net_recv: arg0 = bytes, arg1 = fd, arg2 = syscall nr.
* SYSCALL (op = nr): see syscalls_x86_64.EVENT_DESCRIPTIONS.

`describe(records, payloads)` (probes/detail_text.py) turns payloads into the `events.detail` text.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from typing import Sequence

import numpy as np
import orjson

from whyprobe import clock
from whyprobe.kernel import caps
from whyprobe.kernel.bpfobject import BpfObject
from whyprobe.kernel.libbpf import map_items
from whyprobe.kernel.ring import PayloadBatch
from whyprobe.probes.detail_text import _match, _text, describe, sockaddr_text, tcp_retransmit_text
from whyprobe.kernel.loader import ProbeSet
from whyprobe.probes.base import TargetSpec
from whyprobe.syscalls_x86_64 import syscall_name, syscall_ops
from whyprobe.events import PayloadKind, Source

log = logging.getLogger(__name__)

HOST_SCHED_SWITCH, HOST_EXEC, HOST_EXIT, HOST_FORK = 1, 5, 6, 7
HIST_SLOTS = 32


def _chosen(prog: str, names: set[str], btf: bool) -> bool:
    """tp_btf programs have a raw_tp twin named `<name>_raw`: load one of each pair, by what this kernel can do."""
    if prog.endswith("_raw"):
        return not btf and prog[: -len("_raw")] in names
    if prog + "_raw" in names:
        return btf
    return True


def _load_and_attach(probes: ProbeSet, name: str, *, raw_only_maps: Sequence[str] = (), skip: Sequence[str] = (), **rodata: int) -> BpfObject:
    """Load one of each tp_btf/raw_tp pair (and none of `skip`); maps only the raw_tp programs use shrink to one entry under tp_btf."""
    obj = probes.open(name)
    names = set(obj.program_names())
    btf = caps.can("tp_btf")
    enabled = [p for p in sorted(names) if _chosen(p, names, btf) and p not in skip]
    for p in names:
        obj.set_autoload(p, p in enabled)
    if btf:
        for m in raw_only_maps:
            obj.resize_map(m, 1)
    if rodata:
        obj.set_rodata(**rodata)
    obj.load()
    for p in enabled:
        obj.attach(p)
    return obj


def _comm(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


# ---- sched --------------------------------------------------------------------------------


class SchedFamily:
    """Off-CPU intervals and wakers of traced threads (bpf/sched.bpf.c)."""

    name = "sched"

    def __init__(self, *, min_offcpu_ns: int = 0) -> None:
        self.min_offcpu_ns = min_offcpu_ns
        self.obj: BpfObject | None = None

    def attach(self, probes: ProbeSet, targets: TargetSpec) -> list[str]:
        self.obj = _load_and_attach(probes, "sched", raw_only_maps=("offcpu_tid",), min_offcpu_ns=self.min_offcpu_ns)
        return [] if caps.can("tp_btf") else ["sched: BTF tracepoints unavailable, using raw tracepoints"]

    def on_batch(self, records: np.ndarray) -> None:
        return None

    def thread_names(self) -> list[tuple[int, int, str]]:
        """(tid, pid, comm) of every thread seen taking the CPU from, or waking, a traced thread."""
        if self.obj is None or not self.obj.loaded:
            return []
        keys, values, n = map_items(self.obj.map_fd("names"), 4, 24)
        tids = np.frombuffer(keys, "<u4", n).tolist()
        return [(tid, struct.unpack_from("<I", values, 24 * i)[0], _comm(values[24 * i + 8 : 24 * i + 24])) for i, tid in enumerate(tids)]

    def finish(self, probes: ProbeSet, writer: object) -> None:
        rows = [(tid, pid, comm, time.time_ns()) for tid, pid, comm in self.thread_names()]
        if rows:
            # These comms were read at each thread's latest wake-up or preemption, later
            # than the first event the session named it from: a worker that renames
            # itself after it starts (pthread_setname_np) is known by its new name.
            writer.put_rows("thread_names", ("tid", "pid", "comm", "seen_at"), rows, replace=True)


# ---- proc ---------------------------------------------------------------------------------


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


_BOOT_NS: int | None = None
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _boot_time_ns() -> int:
    global _BOOT_NS
    if _BOOT_NS is None:
        for line in _read("/proc/stat").decode().splitlines():
            if line.startswith("btime "):
                _BOOT_NS = int(line.split()[1]) * 1_000_000_000
                break
        else:
            _BOOT_NS = 0
    return _BOOT_NS


def process_facts(pid: int) -> dict | None:
    """comm, cmdline, exe, ppid, start time (unix ns) of a live process; None when it is gone."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    rest = stat[stat.rfind(b")") + 2 :].split()
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    return {
        "pid": pid,
        "name": _comm(_read(f"/proc/{pid}/comm").strip()),
        "ppid": int(rest[1]),
        "cmdline": " ".join(a.decode("utf-8", "replace") for a in _read(f"/proc/{pid}/cmdline").split(b"\0") if a),
        "exe": exe,
        "started_at": _boot_time_ns() + int(rest[19]) * 1_000_000_000 // _CLK_TCK,
    }


PROCESS_COLUMNS = ("pid", "name", "seen_at", "ppid", "cmdline", "exe", "started_at", "exited_at", "exit_code")


class ProcFamily:
    """fork (children enrolled in the kernel), exec and exit of the traced set (bpf/proc.bpf.c).

    Processes are described from the kernel's records, not from /proc (a
    short-lived child is gone before /proc could be read, and reading it for
    every new pid of a busy host costs more than tracing it): a fork's child
    inherits its parent's exe and command line, an exec brings its file name
    and argv as payloads, joined to the exec records in bulk. /proc is read
    only for the targets given at the start. finish writes `process_names`.
    """

    name = "proc"

    def __init__(self, clock_offset_ns: int | None = None) -> None:
        self.obj: BpfObject | None = None
        self.processes: dict[int, dict] = {}
        self._exec_payloads: list[PayloadBatch] = []  # PATH/ARGV payloads of this drain and the one before
        self._renamed: dict[int, tuple[int, str]] = {}  # tid -> (pid, comm after exec)
        self._clock = clock_offset_ns

    def _offset(self) -> int:
        if self._clock is None:
            self._clock = clock.measure_offset_ns()
        return self._clock

    def attach(self, probes: ProbeSet, targets: TargetSpec) -> list[str]:
        if self._clock is None:
            self._clock = probes.clock_offset_ns
        self.obj = _load_and_attach(probes, "proc")
        for pid in targets.pids:
            self._see(pid)
        return []

    def _row(self, pid: int, comm: str = "") -> dict:
        row = self.processes.get(pid)
        if row is None:
            row = {"pid": pid, "name": comm, "seen_at": time.time_ns(), "ppid": 0, "cmdline": "", "exe": "",
                   "started_at": 0, "exited_at": 0, "exit_code": None}
            self.processes[pid] = row
        return row

    def _see(self, pid: int, comm: str = "") -> dict:
        row = self._row(pid, comm)
        facts = process_facts(pid)
        if facts:
            row.update(facts)
        return row

    def on_payloads(self, payloads: PayloadBatch) -> None:
        """Keep exec file names and argv until their exec records come (this drain or the next)."""
        keep = np.isin(payloads.hdr["kind"], (PayloadKind.PATH, PayloadKind.ARGV))
        self._exec_payloads = self._exec_payloads[-1:] + ([payloads.select(keep)] if keep.any() else [])

    def _exec_texts(self, execs: np.ndarray) -> tuple[list[str | None], list[str | None]]:
        """(exe, cmdline) of each exec record, None where its payload is not there."""
        exe: list[str | None] = [None] * len(execs)
        cmd: list[str | None] = [None] * len(execs)
        for batch in self._exec_payloads:
            hdr = batch.hdr
            for kind, out in ((PayloadKind.PATH, exe), (PayloadKind.ARGV, cmd)):
                sel = np.flatnonzero(hdr["kind"] == kind)
                if not len(sel):
                    continue
                m = _match(execs["ts_ns"], execs["tid"], hdr["ts_ns"][sel], hdr["tid"][sel])
                for i in np.flatnonzero(m >= 0).tolist():
                    data = batch.data(int(sel[m[i]]))
                    out[i] = _text(data) if kind == PayloadKind.PATH else " ".join(_text(a) for a in data.rstrip(b"\0").split(b"\0"))
        return exe, cmd

    def on_batch(self, records: np.ndarray) -> None:
        host = records[(records["source"] == Source.HOST) & np.isin(records["op"], (HOST_FORK, HOST_EXEC, HOST_EXIT))]
        if len(host) == 0:
            return
        offset = self._offset()
        is_exec = host["op"] == HOST_EXEC
        exe, cmd = self._exec_texts(host[is_exec]) if is_exec.any() else ([], [])
        n_exec = 0
        for r in host:
            op, pid = int(r["op"]), int(r["pid"])
            if op == HOST_FORK:
                parent = self._row(pid, _comm(r["comm"]))
                child = self._row(int(r["arg0"]), _comm(r["comm"]))
                child["ppid"] = child["ppid"] or pid
                child["started_at"] = child["started_at"] or int(r["ts_ns"]) + offset
                child["exe"] = child["exe"] or parent["exe"]
                child["cmdline"] = child["cmdline"] or parent["cmdline"]
            elif op == HOST_EXEC:
                row = self._row(pid)
                row["name"] = _comm(r["comm"])
                self._renamed[int(r["tid"])] = (pid, row["name"])
                if exe[n_exec] is not None:
                    row["exe"] = exe[n_exec]
                if cmd[n_exec] is not None:
                    row["cmdline"] = cmd[n_exec]
                n_exec += 1
            else:
                row = self._row(pid, _comm(r["comm"]))
                row["name"] = row["name"] or _comm(r["comm"])
                row["exited_at"] = int(r["ts_ns"]) + offset
                row["exit_code"] = int(r["ret"])

    def rows(self) -> list[tuple]:
        return [tuple(p[c] for c in PROCESS_COLUMNS) for p in self.processes.values()]

    def finish(self, probes: ProbeSet, writer: object) -> None:
        if self.processes:
            writer.put_rows("process_names", PROCESS_COLUMNS, self.rows(), replace=True)
        if self._renamed:
            # A thread is first named by its first event, often still the parent's comm before exec.
            now = time.time_ns()
            rows = [(tid, pid, comm, now) for tid, (pid, comm) in self._renamed.items()]
            writer.put_rows("thread_names", ("tid", "pid", "comm", "seen_at"), rows, replace=True)


# ---- block / net --------------------------------------------------------------------------


class BlockFamily:
    """Block requests of the traced set with latency, bytes and device (bpf/block.bpf.c)."""

    name = "block"

    def __init__(self) -> None:
        self.obj: BpfObject | None = None

    def attach(self, probes: ProbeSet, targets: TargetSpec) -> list[str]:
        self.obj = _load_and_attach(probes, "block")
        return []

    def on_batch(self, records: np.ndarray) -> None:
        return None

    def finish(self, probes: ProbeSet, writer: object) -> None:
        return None


class NetFamily:
    """TCP retransmits and socket send/recv syscalls (bpf/net.bpf.c)."""

    name = "net"

    def __init__(self) -> None:
        self.obj: BpfObject | None = None

    def attach(self, probes: ProbeSet, targets: TargetSpec) -> list[str]:
        # sock_send_length/sock_recv_length (Linux 6.4+) tell retransmits which traced thread owns the socket.
        have_owner = any(os.path.isdir(f"{root}/events/sock/sock_send_length") for root in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"))
        skip = () if have_owner else ("handle_sock_send", "handle_sock_recv")
        self.obj = _load_and_attach(probes, "net", skip=skip)
        return [] if have_owner else ["net: no sock_send_length tracepoint (Linux < 6.4): retransmits are not tied to the traced threads"]

    def on_batch(self, records: np.ndarray) -> None:
        return None

    def finish(self, probes: ProbeSet, writer: object) -> None:
        return None


class MemFamily:
    """Memory stalls of the traced threads: direct/memcg reclaim, compaction; OOM kills (bpf/mem.bpf.c)."""

    name = "mem"

    def __init__(self) -> None:
        self.obj: BpfObject | None = None

    def attach(self, probes: ProbeSet, targets: TargetSpec) -> list[str]:
        self.obj = _load_and_attach(probes, "mem")
        return []

    def on_batch(self, records: np.ndarray) -> None:
        return None

    def finish(self, probes: ProbeSet, writer: object) -> None:
        return None


# ---- syscalls -----------------------------------------------------------------------------

STATS_COLUMNS = ("session_id", "pid", "tid", "nr", "count", "errors", "total_ns", "max_ns", "hist")
_STAT_VALUE = struct.Struct(f"<4Q{HIST_SLOTS}Q")
_STAT_KEY = np.dtype([("pid", "<u4"), ("tid", "<u4"), ("nr", "<u4"), ("pad", "<u4")])


class SyscallsFamily:
    """Every syscall of the traced set aggregated in the kernel, plus individual telling ones (bpf/syscalls.bpf.c)."""

    name = "syscalls"

    def __init__(self, *, mmap_exec_only: bool = True, emit_all: bool = False) -> None:
        self.mmap_exec_only = mmap_exec_only
        # Every syscall as its own event (footprint: exact counts and time per tool-call window).
        self.emit_all = emit_all
        self.obj: BpfObject | None = None
        self._written: dict[int, int] = {}  # key -> count last written to syscall_stats

    def attach(self, probes: ProbeSet, targets: TargetSpec) -> list[str]:
        self.obj = _load_and_attach(probes, "syscalls", mmap_exec_only=int(self.mmap_exec_only), emit_all=int(self.emit_all))
        return []

    def on_batch(self, records: np.ndarray) -> None:
        return None

    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        """The in-kernel aggregates as arrays: keys (pid, tid, nr) and values (count, errors, total_ns, max_ns, hist...)."""
        if self.obj is None or not self.obj.loaded:
            return np.zeros(0, _STAT_KEY), np.zeros((0, 4 + HIST_SLOTS), np.uint64)
        keys, values, n = map_items(self.obj.map_fd("stats"), _STAT_KEY.itemsize, _STAT_VALUE.size)
        return np.frombuffer(keys, _STAT_KEY, n), np.frombuffer(values, np.uint64).reshape(n, 4 + HIST_SLOTS)

    def stats(self) -> list[dict]:
        """Current in-kernel aggregates: pid, tid, nr, name, count, errors, total_ns, max_ns, hist (log2 ns buckets)."""
        keys, vals = self._table()
        out = []
        for (pid, tid, nr, _), (count, errors, total, mx, *hist) in zip(keys.tolist(), vals.tolist()):
            while hist and hist[-1] == 0:
                hist.pop()
            out.append({"pid": pid, "tid": tid, "nr": nr, "name": syscall_name(nr), "count": count,
                        "errors": errors, "total_ns": total, "max_ns": mx, "hist": hist})
        return out

    def checkpoint(self, writer: object) -> None:
        """Write the aggregates that changed since the last checkpoint (rows are replaced, so it is safe to repeat)."""
        sid = getattr(writer, "session_id", 0)
        keys, vals = self._table()
        if not len(keys):
            return
        # One u64 per (pid, tid, nr) key; only rows whose count moved are written again.
        k = keys["pid"].astype(np.uint64) << np.uint64(40) ^ keys["tid"].astype(np.uint64) << np.uint64(12) ^ keys["nr"].astype(np.uint64)
        counts = vals[:, 0]
        changed = np.fromiter((self._written.get(a) != c for a, c in zip(k.tolist(), counts.tolist())), bool, len(k))
        if not changed.any():
            return
        rows = []
        for (pid, tid, nr, _), (count, errors, total, mx, *hist) in zip(keys[changed].tolist(), vals[changed].tolist()):
            while hist and hist[-1] == 0:
                hist.pop()
            rows.append((sid, pid, tid, nr, count, errors, total, mx, orjson.dumps(hist).decode()))
        self._written.update(zip(k[changed].tolist(), counts[changed].tolist()))
        writer.put_rows("syscall_stats", STATS_COLUMNS, rows, replace=True)

    def finish(self, probes: ProbeSet, writer: object) -> None:
        self.checkpoint(writer)
        writer.put_rows("ops", ("source_id", "op_id", "name", "description"), syscall_ops())


__all__ = [
    "BlockFamily",
    "MemFamily",
    "NetFamily",
    "ProcFamily",
    "SchedFamily",
    "SyscallsFamily",
    "describe",
    "process_facts",
    "sockaddr_text",
    "tcp_retransmit_text",
]
