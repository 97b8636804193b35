"""Record layouts (numpy mirrors of bpf/whyprobe.h) and the source/op registry.

The C header is the authority on layout; tests check these dtypes against the
BTF of the compiled objects. Source and op ids 1-7 follow Ingero's tables so
its databases read unchanged; names are the real API function names.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

COMM_LEN = 16
CHUNK_LEN = 4096

EVENT_DTYPE = np.dtype(
    [
        ("ts_ns", "<u8"),
        ("duration_ns", "<u8"),
        ("arg0", "<u8"),
        ("arg1", "<u8"),
        ("arg2", "<u8"),
        ("aux", "<u8"),
        ("cgroup_id", "<u8"),
        ("ret", "<i8"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("cpu", "<u4"),
        ("stack_id", "<i4"),
        ("source", "<u2"),
        ("op", "<u2"),
        ("flags", "<u4"),
        ("comm", f"S{COMM_LEN}"),
    ]
)
assert EVENT_DTYPE.itemsize == 104

PAYLOAD_DTYPE = np.dtype(
    [
        ("ts_ns", "<u8"),
        ("conn", "<u8"),
        ("offset", "<u8"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("fd", "<i4"),
        ("len", "<u4"),
        ("total", "<u4"),
        ("kind", "<u2"),
        ("flags", "<u2"),
    ]
)
assert PAYLOAD_DTYPE.itemsize == 48

# The one stored-event layout: a row of the `events` table as int64, in this order,
# everywhere events are held in memory (writer, reader, live session, live explainer,
# exports, MCP). `id` is the table's rowid; 0 in rows not yet stored (the writer
# lets SQLite assign it). Convert other layouts with `as_event_rows`, never with
# `astype`, which numpy matches by position, not by name.
EVENT_ROW_COLUMNS = (
    "id",
    "timestamp",
    "pid",
    "tid",
    "source",
    "op",
    "duration",
    "arg0",
    "arg1",
    "arg2",
    "aux",
    "ret_code",
    "cpu",
    "cgroup_id",
    "flags",
    "stack_hash",
)
EVENT_ROW_DTYPE = np.dtype([(name, "<i8") for name in EVENT_ROW_COLUMNS])
# What a column the source layout lacks reads as (cpu -1 = unknown; everything else 0).
EVENT_ROW_DEFAULTS = {"cpu": -1}


def as_event_rows(rows: np.ndarray) -> np.ndarray:
    """`rows` (any structured array) as EVENT_ROW_DTYPE, field by field by name.

    Rows already in the layout come back as they are (no copy); fields the source
    lacks take EVENT_ROW_DEFAULTS, fields the layout lacks are left out.
    """
    rows = np.asarray(rows)
    if rows.dtype == EVENT_ROW_DTYPE:
        return rows
    if rows.dtype.names is None:
        raise TypeError(f"event rows must be a structured array, got {rows.dtype}")
    out = np.empty(rows.shape, EVENT_ROW_DTYPE)
    for name in EVENT_ROW_COLUMNS:
        out[name] = rows[name] if name in rows.dtype.names else EVENT_ROW_DEFAULTS.get(name, 0)
    return out


# Flags on an event (WP_F_* in whyprobe.h).
F_PTSZ = 1 << 0
F_NO_RETURN = 1 << 1
F_PREEMPTED = 1 << 2
F_HAS_PAYLOAD = 1 << 3
F_HAS_PYSTACK = 1 << 4
F_DETAIL_LOST = 1 << 8  # set in user space: the event is stored, its payload (detail) was lost
F_SOCK_OWNER = 1 << 9
F_FAULT_WAIT = 1 << 10


class Details:
    """The `events.detail` column of a batch, without a Python str per event.

    Row i's text is text[offsets[i]:offsets[i] + lengths[i]] (UTF-8), NULL where
    lengths[i] < 0: the paths of a batch stay where the payload ring put them.
    """

    __slots__ = ("text", "offsets", "lengths")

    def __init__(self, text: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> None:
        self.text, self.offsets, self.lengths = text, offsets, lengths

    @classmethod
    def from_strings(cls, values: "list[str | None]") -> "Details":
        encoded = [None if v is None else v.encode() for v in values]
        lengths = np.array([-1 if e is None else len(e) for e in encoded], np.int32)
        offsets = np.concatenate([[0], np.cumsum(np.maximum(lengths, 0))[:-1]]).astype(np.int64) if len(lengths) else np.zeros(0, np.int64)
        return cls(np.frombuffer(b"".join(e for e in encoded if e), np.uint8), offsets, lengths)

    def __len__(self) -> int:
        return len(self.lengths)

    def tolist(self) -> "list[str | None]":
        raw = self.text.tobytes()
        return [None if n < 0 else raw[o : o + n].decode("utf-8", "replace") for o, n in zip(self.offsets.tolist(), self.lengths.tolist())]


class Source(IntEnum):
    CUDA = 1
    NVIDIA = 2
    HOST = 3
    DRIVER = 4
    IO = 5
    TCP = 6
    NET = 7
    SYSCALL = 8
    CUSTOM = 9


class PayloadKind(IntEnum):
    PATH = 1
    ARGV = 2
    SOCKADDR = 3
    READ = 4
    WRITE = 5
    SSL_READ = 6
    SSL_WRITE = 7
    SYMBOL = 8


PL_TRUNCATED = 1 << 0
PL_PIPE = 1 << 1
PL_UNIX = 1 << 2
PL_TCP = 1 << 3
PL_TLS = 1 << 4
PL_SNIFFED = 1 << 5

SOURCE_DESCRIPTIONS = {
    Source.CUDA: "CUDA runtime API (libcudart) - uprobes",
    Source.NVIDIA: "NVIDIA kernel driver - reserved, not traced",
    Source.HOST: "Host kernel events - scheduler, process lifecycle, memory",
    Source.DRIVER: "CUDA driver API (libcuda) - uprobes",
    Source.IO: "Block I/O - block_rq_issue/block_rq_complete",
    Source.TCP: "TCP - tcp_retransmit_skb",
    Source.NET: "Socket send/recv syscalls",
    Source.SYSCALL: "Individual syscalls of traced processes (op = x86_64 syscall number)",
    Source.CUSTOM: "User-configured probes (op = index in probes.uprobes; 1000 + index in probes.tracepoints)",
}


@dataclass(frozen=True)
class OpInfo:
    source: Source
    op: int
    name: str
    description: str


def _ops(source: Source, rows: list[tuple[int, str, str]]) -> list[OpInfo]:
    return [OpInfo(source, op, name, desc) for op, name, desc in rows]


# For sched_switch: ts_ns = switch-out, duration_ns = off-CPU time, arg0 = prev_state,
# arg1 = tid that took the CPU, arg2 = CPU switched out on, ret = waker pid;
# F_PREEMPTED set when the thread was still runnable. aux = waker tid when blocked,
# and when preempted the ns the arg1 thread ran during the interval (its
# sum_exec_runtime growth, wherever it ran; may exceed the interval by the few us
# of scheduler path between clocks); 0 = unknown in both cases.
OPS: list[OpInfo] = (
    _ops(
        Source.CUDA,
        [
            (1, "cudaMalloc", "Device memory allocation (arg0 = bytes, arg1 = returned pointer)"),
            (2, "cudaFree", "Device memory free (arg0 = pointer)"),
            (3, "cudaLaunchKernel", "Kernel launch (arg0 = function, arg1 = grid x*y*z, arg2 = stream)"),
            (4, "cudaMemcpy", "Synchronous copy (arg0 = bytes, arg1 = cudaMemcpyKind)"),
            (5, "cudaStreamSynchronize", "Wait for a stream (arg2 = stream)"),
            (6, "cudaDeviceSynchronize", "Wait for all work on the device"),
            (7, "cudaMemcpyAsync", "Asynchronous copy (arg0 = bytes, arg1 = kind, arg2 = stream)"),
            (8, "cudaMallocManaged", "Unified memory allocation (arg0 = bytes)"),
            (9, "cudaMallocAsync", "Stream-ordered allocation (arg0 = bytes, arg2 = stream)"),
            (10, "cudaMallocHost", "Pinned host allocation (arg0 = bytes)"),
            (11, "cudaHostAlloc", "Pinned host allocation (arg0 = bytes, arg1 = flags)"),
            (12, "cudaFreeAsync", "Stream-ordered free (arg0 = pointer, arg2 = stream)"),
            (13, "cudaLaunchKernelExC", "Kernel launch with config (arg0 = function, arg2 = stream)"),
            (14, "cudaGraphLaunch", "CUDA graph launch (arg0 = graph exec, arg2 = stream)"),
            (15, "cudaMemcpy2D", "2D copy (arg0 = width*height bytes, arg1 = kind)"),
            (16, "cudaMemcpy2DAsync", "2D async copy (arg0 = bytes, arg1 = kind, arg2 = stream)"),
            (17, "cudaMemcpyPeer", "Peer copy (arg0 = bytes)"),
            (18, "cudaMemcpyPeerAsync", "Peer async copy (arg0 = bytes, arg2 = stream)"),
            (19, "cudaMemset", "Memset (arg0 = bytes, arg1 = value)"),
            (20, "cudaMemsetAsync", "Async memset (arg0 = bytes, arg1 = value, arg2 = stream)"),
            (21, "cudaEventSynchronize", "Wait for an event (arg0 = event)"),
            (22, "cudaStreamWaitEvent", "Make a stream wait for an event (arg2 = stream)"),
            (23, "cudaEventQuery", "Poll an event (arg0 = event)"),
            (24, "cudaStreamQuery", "Poll a stream (arg2 = stream)"),
            (25, "cudaGetKernel", "Kernel handle of a host stub, as CUDA 13 launch stubs get it (arg0 = host function, arg1 = cudaKernel_t returned)"),
        ],
    )
    + _ops(
        Source.HOST,
        [
            (1, "sched_switch", "Off-CPU interval of a traced thread (duration = off-CPU time)"),
            (2, "sched_wakeup", "A traced thread was woken (arg1 = waker tid)"),
            (3, "mm_page_alloc", "Kernel page allocation (arg0 = bytes)"),
            (4, "oom_kill", "Out-of-memory kill (pid/tid = the allocating task, arg0 = victim pid, arg1/arg2 = its anon/file rss pages)"),
            (5, "process_exec", "execve (detail = filename and argv head)"),
            (6, "process_exit", "Process exited (ret = exit code)"),
            (7, "process_fork", "Process forked (arg0 = child pid, auto-enrolled)"),
            (8, "page_fault", "User page fault (arg0 = address)"),
            (16, "cpu_sample", "On-CPU sample of a traced thread (arg0 = period ns, arg1 = 1 in kernel mode; stack = what it ran)"),
            (20, "direct_reclaim", "Direct reclaim stall of a traced thread (arg0 = pages reclaimed, arg1 = order, arg2 = gfp flags)"),
            (21, "memcg_reclaim", "Cgroup memory reclaim stall of a traced thread (arg0 = pages reclaimed, arg1 = order, arg2 = gfp flags)"),
            (22, "compaction", "Memory compaction in a traced thread's context (arg0 = status, arg1 = sync)"),
        ],
    )
    + _ops(
        Source.DRIVER,
        [
            (1, "cuLaunchKernel", "Kernel launch via driver API (arg0 = function, arg2 = stream)"),
            (2, "cuMemcpy", "Synchronous copy via driver API (arg0 = bytes, arg1 = kind)"),
            (3, "cuMemcpyAsync", "Asynchronous copy via driver API (arg0 = bytes, arg1 = kind, arg2 = stream)"),
            (4, "cuCtxSynchronize", "Wait for all work in the context"),
            (5, "cuMemAlloc", "Device allocation via driver API (arg0 = bytes)"),
            (6, "cuMemAllocManaged", "Unified memory allocation via driver API (arg0 = bytes)"),
            (7, "cuLaunchKernelEx", "Kernel launch with config via driver API (arg0 = function)"),
            (8, "cuGraphLaunch", "CUDA graph launch via driver API (arg2 = stream)"),
            (9, "cuMemAllocAsync", "Stream-ordered allocation via driver API (arg0 = bytes)"),
            (10, "cuMemFree", "Device free via driver API (arg0 = pointer)"),
            (11, "cuStreamSynchronize", "Wait for a stream via driver API (arg2 = stream)"),
            (12, "cuEventSynchronize", "Wait for an event via driver API"),
            (13, "cuMemMap", "Map a VMM allocation (arg0 = bytes)"),
            (14, "cuMemCreate", "Create a VMM allocation (arg0 = bytes)"),
            (15, "cuModuleGetFunction", "Kernel handle by name (arg0 = module, arg1 = CUfunction returned, arg2 = name pointer; detail = name)"),
            (16, "cuLibraryGetKernel", "Kernel handle by name (arg0 = library, arg1 = CUkernel returned, arg2 = name pointer; detail = name)"),
            (17, "cuKernelGetFunction", "Function of a kernel in the current context (arg0 = CUkernel, arg1 = CUfunction returned)"),
        ],
    )
    + _ops(
        Source.IO,
        [
            (1, "block_read", "Block read request (arg0 = bytes, arg1 = device, arg2 = sector)"),
            (2, "block_write", "Block write request (arg0 = bytes, arg1 = device, arg2 = sector)"),
            (3, "block_discard", "Block discard/trim request (arg0 = bytes)"),
            (4, "block_flush", "Block flush request"),
        ],
    )
    + _ops(Source.TCP, [(1, "tcp_retransmit", "TCP segment retransmission (detail = endpoints, state)")])
    + _ops(
        Source.NET,
        [
            (1, "net_send", "Socket send syscall (arg0 = bytes, arg1 = fd)"),
            (2, "net_recv", "Socket receive syscall (arg0 = bytes, arg1 = fd)"),
        ],
    )
)

_BY_KEY = {(o.source, o.op): o for o in OPS}
_BY_NAME = {o.name: o for o in OPS}


def op_info(source: int, op: int) -> OpInfo | None:
    return _BY_KEY.get((Source(source), op)) if source in Source._value2member_map_ else None


def op_by_name(name: str) -> OpInfo | None:
    return _BY_NAME.get(name)


def op_name(source: int, op: int) -> str:
    info = op_info(source, op)
    return info.name if info else f"{source}:{op}"
