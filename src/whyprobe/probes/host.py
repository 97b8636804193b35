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
* TCP/tcp_retransmit: arg0 = state, arg1 = sport, arg2 = dport, aux = family.
* NET/net_send|net_recv: arg0 = bytes, arg1 = fd, arg2 = syscall nr.
* SYSCALL (op = nr): see syscalls_x86_64.EVENT_DESCRIPTIONS.

`describe(records, payloads)` turns payloads into the `events.detail` text.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import shlex
import socket
import struct
import time
from typing import Iterable, Sequence

import numpy as np

from whyprobe import clock
from whyprobe.kernel import caps
from whyprobe.kernel.libbpf import BpfObject, map_keys, map_lookup
from whyprobe.kernel.loader import ProbeSet
from whyprobe.probes.base import TargetSpec
from whyprobe.syscalls_x86_64 import syscall_name, syscall_ops
from whyprobe.events import F_HAS_PAYLOAD, PayloadKind, Source

log = logging.getLogger(__name__)

HOST_SCHED_SWITCH, HOST_EXEC, HOST_EXIT, HOST_FORK = 1, 5, 6, 7
HIST_SLOTS = 32
TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
    7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV",
}


def _chosen(prog: str, names: set[str], btf: bool) -> bool:
    """tp_btf programs have a raw_tp twin named `<name>_raw`: load one of each pair, by what this kernel can do."""
    if prog.endswith("_raw"):
        return not btf and prog[: -len("_raw")] in names
    if prog + "_raw" in names:
        return btf
    return True


def _load_and_attach(probes: ProbeSet, name: str, *, raw_only_maps: Sequence[str] = (), **rodata: int) -> BpfObject:
    """Load one of each tp_btf/raw_tp pair; maps only the raw_tp programs use shrink to one entry under tp_btf."""
    obj = probes.open(name)
    names = set(obj.program_names())
    btf = caps.can("tp_btf")
    enabled = [p for p in sorted(names) if _chosen(p, names, btf)]
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


# ---- payload -> detail ------------------------------------------------------------------


def sockaddr_text(data: bytes) -> str:
    """struct sockaddr (in, in6, un) as 'ip:port', '[ip6]:port' or the unix path."""
    if len(data) < 2:
        return ""
    family = struct.unpack_from("<H", data)[0]
    if family == socket.AF_INET and len(data) >= 8:
        port = struct.unpack_from(">H", data, 2)[0]
        return f"{ipaddress.IPv4Address(data[4:8])}:{port}"
    if family == socket.AF_INET6 and len(data) >= 24:
        port = struct.unpack_from(">H", data, 2)[0]
        return f"[{ipaddress.IPv6Address(data[8:24])}]:{port}"
    if family == socket.AF_UNIX:
        path = data[2:]
        if path[:1] == b"\0":
            return "@" + path[1:].split(b"\0", 1)[0].decode("utf-8", "replace")
        return path.split(b"\0", 1)[0].decode("utf-8", "replace")
    return f"family {family}"


def tcp_retransmit_text(data: bytes, state: int) -> str:
    """struct wp_tcp_addrs (bpf/host.h) + TCP state as 'src -> dst STATE'."""
    if len(data) < 46:
        return ""
    sport, dport, family = struct.unpack_from("<HHH", data)
    if family == socket.AF_INET6:
        src, dst = f"[{ipaddress.IPv6Address(data[14:30])}]", f"[{ipaddress.IPv6Address(data[30:46])}]"
    else:
        src, dst = str(ipaddress.IPv4Address(data[6:10])), str(ipaddress.IPv4Address(data[10:14]))
    return f"{src}:{sport} -> {dst}:{dport} {TCP_STATES.get(state, str(state))}"


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def describe(records: np.ndarray, payloads: Sequence[tuple[np.void, bytes]]) -> list[str | None]:
    """`events.detail` for each record of the host families, from payloads with the same (tid, ts_ns).

    Records without WP_F_HAS_PAYLOAD, or of other sources, get None. The BPF
    side submits payloads before their event, so drain the events ring first,
    then the payloads ring, and every payload an event announces is there.
    """
    by_key: dict[tuple[int, int], dict[int, bytes]] = {}
    for hdr, data in payloads:
        kind = int(hdr["kind"])
        if kind in (PayloadKind.PATH, PayloadKind.ARGV, PayloadKind.SOCKADDR):
            by_key.setdefault((int(hdr["tid"]), int(hdr["ts_ns"])), {})[kind] = bytes(data)
    out: list[str | None] = [None] * len(records)
    if not by_key:
        return out
    for i in np.flatnonzero(records["flags"] & F_HAS_PAYLOAD):
        r = records[i]
        got = by_key.get((int(r["tid"]), int(r["ts_ns"])))
        if not got:
            continue
        source, op = int(r["source"]), int(r["op"])
        if source == Source.TCP:
            out[i] = tcp_retransmit_text(got.get(PayloadKind.SOCKADDR, b""), int(r["arg0"]))
        elif source == Source.HOST and op == HOST_EXEC:
            argv = [_text(a) for a in got.get(PayloadKind.ARGV, b"").rstrip(b"\0").split(b"\0") if a]
            out[i] = shlex.join(argv) if argv else _text(got.get(PayloadKind.PATH, b""))
        elif PayloadKind.SOCKADDR in got:
            out[i] = sockaddr_text(got[PayloadKind.SOCKADDR])
        elif PayloadKind.PATH in got:
            parts = got[PayloadKind.PATH].split(b"\0")
            out[i] = " -> ".join(_text(p) for p in parts) if len(parts) > 1 else _text(parts[0])
    return out


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
        fd = self.obj.map_fd("names")
        out = []
        for key in list(map_keys(fd, 4)):
            val = map_lookup(fd, key, 24)
            if val is None:
                continue
            pid = struct.unpack_from("<I", val)[0]
            out.append((struct.unpack("<I", key)[0], pid, _comm(val[8:24])))
        return out

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

    on_batch reads /proc for every process it sees fork or exec (while it is
    alive) and notes exits; finish writes `process_names`.
    """

    name = "proc"

    def __init__(self, clock_offset_ns: int | None = None) -> None:
        self.obj: BpfObject | None = None
        self.processes: dict[int, dict] = {}
        self._exec_payloads: dict[tuple[int, int], dict[int, bytes]] = {}
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

    def _see(self, pid: int, comm: str = "") -> dict:
        row = self.processes.get(pid)
        facts = process_facts(pid)
        if row is None:
            row = {"pid": pid, "name": comm, "seen_at": time.time_ns(), "ppid": 0, "cmdline": "", "exe": "",
                   "started_at": 0, "exited_at": 0, "exit_code": None}
            self.processes[pid] = row
        if facts:
            row.update(facts)
        return row

    def on_payloads(self, payloads: Sequence[tuple[np.void, bytes]]) -> None:
        """Keep exec file names and argv: a short-lived child is gone before /proc can be read."""
        for hdr, data in payloads:
            if int(hdr["kind"]) in (PayloadKind.PATH, PayloadKind.ARGV):
                self._exec_payloads.setdefault((int(hdr["tid"]), int(hdr["ts_ns"])), {})[int(hdr["kind"])] = bytes(data)
        if len(self._exec_payloads) > 65536:  # payloads of syscalls, or of exec events that were dropped
            self._exec_payloads.clear()

    def on_batch(self, records: np.ndarray) -> None:
        host = records[records["source"] == Source.HOST]
        if len(host) == 0:
            return
        offset = self._offset()
        for r in host[np.isin(host["op"], (HOST_FORK, HOST_EXEC, HOST_EXIT))]:
            op, pid = int(r["op"]), int(r["pid"])
            if op == HOST_FORK:
                child = self._see(int(r["arg0"]))
                child["ppid"] = child["ppid"] or pid
                child["started_at"] = child["started_at"] or int(r["ts_ns"]) + offset
            elif op == HOST_EXEC:
                row = self._see(pid, _comm(r["comm"]))
                row["name"] = _comm(r["comm"])
                self._renamed[int(r["tid"])] = (pid, row["name"])
                got = self._exec_payloads.pop((int(r["tid"]), int(r["ts_ns"])), {})
                if PayloadKind.PATH in got and not row["exe"]:
                    row["exe"] = _text(got[PayloadKind.PATH])
                if PayloadKind.ARGV in got and not row["cmdline"]:
                    row["cmdline"] = " ".join(_text(a) for a in got[PayloadKind.ARGV].rstrip(b"\0").split(b"\0"))
            else:
                row = self.processes.get(pid) or self._see(pid, _comm(r["comm"]))
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
        self.obj = _load_and_attach(probes, "net")
        return []

    def on_batch(self, records: np.ndarray) -> None:
        return None

    def finish(self, probes: ProbeSet, writer: object) -> None:
        return None


# ---- syscalls -----------------------------------------------------------------------------

STATS_COLUMNS = ("session_id", "pid", "tid", "nr", "count", "errors", "total_ns", "max_ns", "hist")
_STAT_VALUE = struct.Struct(f"<4Q{HIST_SLOTS}Q")


class SyscallsFamily:
    """Every syscall of the traced set aggregated in the kernel, plus individual telling ones (bpf/syscalls.bpf.c)."""

    name = "syscalls"

    def __init__(self, *, mmap_exec_only: bool = True, emit_all: bool = False) -> None:
        self.mmap_exec_only = mmap_exec_only
        # Every syscall as its own event (footprint: exact counts and time per tool-call window).
        self.emit_all = emit_all
        self.obj: BpfObject | None = None

    def attach(self, probes: ProbeSet, targets: TargetSpec) -> list[str]:
        self.obj = _load_and_attach(probes, "syscalls", mmap_exec_only=int(self.mmap_exec_only), emit_all=int(self.emit_all))
        return []

    def on_batch(self, records: np.ndarray) -> None:
        return None

    def stats(self) -> list[dict]:
        """Current in-kernel aggregates: pid, tid, nr, name, count, errors, total_ns, max_ns, hist (log2 ns buckets)."""
        if self.obj is None or not self.obj.loaded:
            return []
        fd = self.obj.map_fd("stats")
        out = []
        for key in list(map_keys(fd, 16)):
            val = map_lookup(fd, key, _STAT_VALUE.size)
            if val is None:
                continue
            pid, tid, nr, _ = struct.unpack("<4I", key)
            count, errors, total, mx, *hist = _STAT_VALUE.unpack(val)
            while hist and hist[-1] == 0:
                hist.pop()
            out.append({"pid": pid, "tid": tid, "nr": nr, "name": syscall_name(nr), "count": count,
                        "errors": errors, "total_ns": total, "max_ns": mx, "hist": hist})
        return out

    def checkpoint(self, writer: object) -> None:
        """Write the cumulative aggregates (safe to call periodically: rows are replaced)."""
        sid = getattr(writer, "session_id", 0)
        rows = [(sid, s["pid"], s["tid"], s["nr"], s["count"], s["errors"], s["total_ns"], s["max_ns"], json.dumps(s["hist"]))
                for s in self.stats()]
        if rows:
            writer.put_rows("syscall_stats", STATS_COLUMNS, rows, replace=True)

    def finish(self, probes: ProbeSet, writer: object) -> None:
        self.checkpoint(writer)
        writer.put_rows("ops", ("source_id", "op_id", "name", "description"), syscall_ops())


__all__ = [
    "BlockFamily",
    "NetFamily",
    "ProcFamily",
    "SchedFamily",
    "SyscallsFamily",
    "describe",
    "process_facts",
    "sockaddr_text",
    "tcp_retransmit_text",
]
