"""The CUDA family: runtime (libcudart) and driver (libcuda) calls through uprobes.

One entry and one return program (bpf/cuda.bpf.c) serve every symbol of a
library, attached with one uprobe_multi link per direction; each symbol's
cookie carries its op, source, per-thread-stream flag and argument layout
(bpf/cuda.h). Libraries are attached when the trace starts and, for libraries
a target loads later (dlopen, any path), while the target is held at the
open of the file (record/follow.py), before its first call. The periodic
maps scan remains for files mapped without an open the kernel saw.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Sequence

import numpy as np

from whyprobe.errors import WhyprobeError
from whyprobe.kernel import caps
from whyprobe.kernel.elfsym import lookup
from whyprobe.kernel.libbpf import BpfError
from whyprobe.probes import libs
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.kernels import COLUMNS as KERNEL_COLUMNS
from whyprobe.probes.kernels import KernelNames
from whyprobe.events import Source, op_by_name

log = logging.getLogger(__name__)


class Layout(IntEnum):
    """Mirror of enum cuda_layout in bpf/cuda.h."""

    NONE = 0
    MALLOC = 1
    MALLOC_ASYNC = 2
    MALLOC_FLAGS = 3
    PTR = 4
    PTR_STREAM = 5
    LAUNCH = 6
    LAUNCH_CFG = 7
    MEMCPY = 8
    MEMCPY_ASYNC = 9
    MEMCPY2D = 10
    MEMCPY2D_ASYNC = 11
    MEMCPY_PEER = 12
    MEMCPY_PEER_ASYNC = 13
    MEMSET = 14
    MEMSET_ASYNC = 15
    STREAM = 16
    STREAM_WAIT = 17
    CU_LAUNCH = 18
    CU_MEMCPY = 19
    CU_MEMCPY_ASYNC = 20
    SIZE2 = 21
    GET_FUNC = 22
    GET_FUNC_OF = 23


# cudaMemcpyKind values, carried in the cookie for driver copies named by direction.
HTOD, DTOH, DTOD = 1, 2, 3


@dataclass(frozen=True)
class Symbol:
    name: str
    op: str  # name in events.py OPS
    layout: Layout
    ptsz: bool = False
    kind: int = 0

    @property
    def source(self) -> Source:
        return Source.CUDA if self.op.startswith("cuda") else Source.DRIVER

    @property
    def cookie(self) -> int:
        info = op_by_name(self.op)
        assert info is not None and info.source == self.source, self.op
        return info.op | int(self.source) << 16 | int(self.ptsz) << 24 | int(self.layout) << 32 | self.kind << 40


def _with_variant(base: str, op: str, layout: Layout, suffix: str | None, kind: int = 0) -> list[Symbol]:
    syms = [Symbol(base, op, layout, kind=kind)]
    if suffix:
        syms.append(Symbol(base + suffix, op, layout, ptsz=True, kind=kind))
    return syms


L = Layout
_RUNTIME_SPEC: list[tuple[str, str, Layout, str | None]] = [
    # (symbol, op, layout, per-thread-stream suffix the runtime exports)
    ("cudaMalloc", "cudaMalloc", L.MALLOC, None),
    ("cudaMallocAsync", "cudaMallocAsync", L.MALLOC_ASYNC, "_ptsz"),
    ("cudaMallocManaged", "cudaMallocManaged", L.MALLOC, None),
    ("cudaMallocHost", "cudaMallocHost", L.MALLOC, None),
    ("cudaHostAlloc", "cudaHostAlloc", L.MALLOC_FLAGS, None),
    ("cudaFree", "cudaFree", L.PTR, None),
    ("cudaFreeAsync", "cudaFreeAsync", L.PTR_STREAM, "_ptsz"),
    # Not __cudaLaunchKernel: it tail-jumps into cudaLaunchKernel, probing both counts twice.
    ("cudaLaunchKernel", "cudaLaunchKernel", L.LAUNCH, "_ptsz"),
    ("cudaLaunchKernelExC", "cudaLaunchKernelExC", L.LAUNCH_CFG, "_ptsz"),
    ("cudaGraphLaunch", "cudaGraphLaunch", L.PTR_STREAM, "_ptsz"),
    ("cudaMemcpy", "cudaMemcpy", L.MEMCPY, "_ptds"),
    ("cudaMemcpyAsync", "cudaMemcpyAsync", L.MEMCPY_ASYNC, "_ptsz"),
    ("cudaMemcpy2D", "cudaMemcpy2D", L.MEMCPY2D, "_ptds"),
    ("cudaMemcpy2DAsync", "cudaMemcpy2DAsync", L.MEMCPY2D_ASYNC, "_ptsz"),
    ("cudaMemcpyPeer", "cudaMemcpyPeer", L.MEMCPY_PEER, None),
    ("cudaMemcpyPeerAsync", "cudaMemcpyPeerAsync", L.MEMCPY_PEER_ASYNC, None),
    ("cudaMemset", "cudaMemset", L.MEMSET, "_ptds"),
    ("cudaMemsetAsync", "cudaMemsetAsync", L.MEMSET_ASYNC, "_ptsz"),
    ("cudaStreamSynchronize", "cudaStreamSynchronize", L.STREAM, "_ptsz"),
    ("cudaDeviceSynchronize", "cudaDeviceSynchronize", L.NONE, None),
    ("cudaEventSynchronize", "cudaEventSynchronize", L.PTR, None),
    ("cudaStreamWaitEvent", "cudaStreamWaitEvent", L.STREAM_WAIT, "_ptsz"),
    ("cudaEventQuery", "cudaEventQuery", L.PTR, None),
    ("cudaStreamQuery", "cudaStreamQuery", L.STREAM, "_ptsz"),
    # CUDA 13 stubs launch a cudaKernel_t from __cudaGetKernel(&handle, hostFun): handle -> stub -> name.
    ("cudaGetKernel", "cudaGetKernel", L.GET_FUNC_OF, None),
    ("__cudaGetKernel", "cudaGetKernel", L.GET_FUNC_OF, None),
]

_DRIVER_SPEC: list[tuple[str, str, Layout, str | None, int]] = [
    ("cuLaunchKernel", "cuLaunchKernel", L.CU_LAUNCH, "_ptsz", 0),
    ("cuLaunchKernelEx", "cuLaunchKernelEx", L.LAUNCH_CFG, "_ptsz", 0),
    ("cuGraphLaunch", "cuGraphLaunch", L.PTR_STREAM, "_ptsz", 0),
    ("cuMemcpyHtoD_v2", "cuMemcpy", L.CU_MEMCPY, "_ptds", HTOD),
    ("cuMemcpyDtoH_v2", "cuMemcpy", L.CU_MEMCPY, "_ptds", DTOH),
    ("cuMemcpyDtoD_v2", "cuMemcpy", L.CU_MEMCPY, "_ptds", DTOD),
    ("cuMemcpyHtoDAsync_v2", "cuMemcpyAsync", L.CU_MEMCPY_ASYNC, "_ptsz", HTOD),
    ("cuMemcpyDtoHAsync_v2", "cuMemcpyAsync", L.CU_MEMCPY_ASYNC, "_ptsz", DTOH),
    ("cuMemcpyDtoDAsync_v2", "cuMemcpyAsync", L.CU_MEMCPY_ASYNC, "_ptsz", DTOD),
    ("cuMemAlloc_v2", "cuMemAlloc", L.MALLOC, None, 0),
    ("cuMemAllocAsync", "cuMemAllocAsync", L.MALLOC_ASYNC, "_ptsz", 0),
    ("cuMemAllocManaged", "cuMemAllocManaged", L.MALLOC, None, 0),
    ("cuMemFree_v2", "cuMemFree", L.PTR, None, 0),
    ("cuCtxSynchronize", "cuCtxSynchronize", L.NONE, None, 0),
    ("cuStreamSynchronize", "cuStreamSynchronize", L.STREAM, "_ptsz", 0),
    ("cuEventSynchronize", "cuEventSynchronize", L.PTR, None, 0),
    ("cuMemMap", "cuMemMap", L.SIZE2, None, 0),
    ("cuMemCreate", "cuMemCreate", L.MALLOC, None, 0),
    # Name -> handle lookups, so driver launches (Triton, JIT) name their kernels.
    ("cuModuleGetFunction", "cuModuleGetFunction", L.GET_FUNC, None, 0),
    ("cuLibraryGetKernel", "cuLibraryGetKernel", L.GET_FUNC, None, 0),
    ("cuKernelGetFunction", "cuKernelGetFunction", L.GET_FUNC_OF, None, 0),
]

RUNTIME_SYMBOLS: list[Symbol] = [s for b, op, lay, suf in _RUNTIME_SPEC for s in _with_variant(b, op, lay, suf)]
DRIVER_SYMBOLS: list[Symbol] = [s for b, op, lay, suf, k in _DRIVER_SPEC for s in _with_variant(b, op, lay, suf, k)]
ALL_SYMBOLS: dict[str, Symbol] = {s.name: s for s in RUNTIME_SYMBOLS + DRIVER_SYMBOLS}


@dataclass
class LibraryProbe:
    """What was (or would be) attached in one file."""

    path: str
    via: str
    found: dict[str, int] = field(default_factory=dict)  # symbol -> file offset
    missing: list[str] = field(default_factory=list)
    attached_at_ns: int = 0

    @property
    def kinds(self) -> list[str]:
        names = set(self.found)
        return [k for k, table in (("runtime", RUNTIME_SYMBOLS), ("driver", DRIVER_SYMBOLS)) if any(s.name in names for s in table)]


def plan_library(path: str, via: str = "") -> LibraryProbe:
    """Which of our symbols `path` defines (dynamic or static symbols) and which it lacks."""
    table = lookup(path, [s.name for group in (RUNTIME_SYMBOLS, DRIVER_SYMBOLS) for s in group])
    probe = LibraryProbe(path=path, via=via)
    for group in (RUNTIME_SYMBOLS, DRIVER_SYMBOLS):
        present = [s for s in group if s.name in table]
        if not present:
            continue
        for s in group:
            if s.name in table:
                probe.found[s.name] = table[s.name]
            else:
                probe.missing.append(s.name)
    return probe


def discovery_report(pids: list[int] | None = None) -> dict:
    """For `whyprobe check`: CUDA libraries found on this host, symbols each defines and lacks."""
    hits, searched = libs.find_cuda_libraries(pids=pids or [])
    out = []
    for hit in hits:
        try:
            plan = plan_library(hit.path, hit.via)
        except WhyprobeError as exc:
            out.append({"path": hit.path, "via": hit.via, "symbols": 0, "missing": [], "error": str(exc)})
            continue
        out.append({"path": hit.path, "via": hit.via, "kinds": plan.kinds, "symbols": len(plan.found), "missing": plan.missing})
    return {"libraries": out, "searched": searched}


class CudaFamily:
    """ProbeFamily for CUDA: attach to given libraries, then to any a target maps later."""

    name = "cuda"

    def __init__(self, libraries: Sequence[str | tuple[str, str]] = (), *, rescan_interval_s: float = 0.2, session: bool | None = None) -> None:
        # Libraries to attach at start, as paths or (path, how it was found); none = the targets' maps.
        self.libraries = [(lib, "--lib") if isinstance(lib, str) else tuple(lib) for lib in libraries]
        # One session program (entry cancels the return of calls it does not record) where the
        # kernel has uprobe sessions, else an entry/return pair; None = probe the kernel at attach.
        self.session = session
        self.rescan_interval_s = rescan_interval_s
        self.attached: dict[str, LibraryProbe] = {}
        # (path, mapped no earlier than ns, attached ns) of libraries attached after the trace started.
        self.late: list[tuple[str, int, int]] = []
        self._inodes: set[tuple[int, int]] = set()
        self._obj = None
        self._last_scan = 0.0
        self._last_scan_ns = 0
        self._seen_paths: set[str] = set()
        self.kernels = KernelNames()

    def attach(self, probes, targets: TargetSpec) -> list[str]:
        if self.session is None:
            self.session = caps.can("uprobe_session")
        obj = probes.open("cuda_session" if self.session else "cuda")
        if self.session:
            obj.set_session_uprobe("handle_cuda_session")
        obj.load()
        self._obj = obj
        warnings: list[str] = []
        paths = self.libraries + [(p, "resolved for the command") for p in targets.library_paths]
        if not paths:
            hits, _ = libs.find_cuda_libraries(pids=targets.pids, include_installed=not targets.pids)
            paths = [(h.path, h.via) for h in hits]
        for path, via in paths:
            warnings += self.attach_library(path, via)
        for pid in targets.pids:
            self.kernels.note_maps(pid)
        return warnings

    def attach_library(self, path: str, via: str = "", first_seen_ns: int = 0) -> list[str]:
        """Attach to one file (idempotent per inode: uprobes are per inode, twice would double count)."""
        self._seen_paths.add(os.path.realpath(path))
        try:
            st = os.stat(path)
        except OSError as exc:
            return [f"cannot attach to {path}: {exc.strerror}"]
        inode = (st.st_dev, st.st_ino)
        if inode in self._inodes:
            return []
        try:
            plan = plan_library(path, via)
        except WhyprobeError as exc:
            return [str(exc)]
        if not plan.found:
            return [f"{path} defines none of the CUDA functions whyprobe probes; not attached"]
        names = list(plan.found)
        offsets = [plan.found[n] for n in names]
        cookies = [ALL_SYMBOLS[n].cookie for n in names]
        try:
            if self.session:
                self._obj.attach_uprobe_multi("handle_cuda_session", path, offsets, cookies)
            else:
                self._obj.attach_uprobe_multi("handle_cuda_entry", path, offsets, cookies)
                self._obj.attach_uprobe_multi("handle_cuda_return", path, offsets, cookies, retprobe=True)
        except BpfError as exc:
            return [f"cannot attach to {path}: {exc}"]
        plan.attached_at_ns = time.time_ns()
        self._inodes.add(inode)
        self.attached[path] = plan
        if first_seen_ns:
            self.late.append((path, first_seen_ns, plan.attached_at_ns))
        warnings = []
        if plan.missing:
            warnings.append(f"{os.path.basename(path)} lacks {len(plan.missing)} probed symbols (skipped): {', '.join(plan.missing)}")
        return warnings

    def held_libraries(self) -> list[str]:
        """Base-name prefixes whose open holds a target until attached: the runtime, the driver, any --lib."""
        return ["libcudart.so", "libcuda.so"] + [os.path.basename(p) for p, _ in self.libraries]

    def on_library(self, pid: int, path: str) -> list[str]:
        """A target opened `path` and waits, stopped, until this returns: attach before its first call."""
        names = {os.path.basename(p) for p, _ in self.libraries}
        if self._obj is None or not (libs.is_cuda_library(path) or os.path.basename(path) in names):
            return []
        return self.attach_library(path, f"opened by pid {pid}")

    def tick(self, pids: list[int]) -> list[str]:
        """Called periodically by the session: attach libraries the targets mapped since (dlopen)."""
        now = time.monotonic()
        if now - self._last_scan < self.rescan_interval_s or self._obj is None:
            return []
        self._last_scan = now
        previous, self._last_scan_ns = self._last_scan_ns, time.time_ns()
        warnings = []
        for pid in pids:
            mapped = libs.cuda_maps(pid)
            if mapped:
                # Only CUDA processes launch kernels: keep their maps to name launch stubs with.
                self.kernels.note_maps(pid)
            for path in mapped:
                if os.path.realpath(path) not in self._seen_paths:
                    # Not there at the previous scan: calls between then and now may be missed.
                    warnings += self.attach_library(path, f"maps of pid {pid}", first_seen_ns=previous or self._last_scan_ns)
        return warnings

    def flags(self) -> dict:
        """What the session stores in sessions.flags about this family."""
        return {
            "cuda_libraries": [{"path": p.path, "via": p.via, "symbols": len(p.found), "missing": p.missing} for p in self.attached.values()],
            # A library attached while the process already ran may have missed calls in between.
            "cuda_late_attach": [{"path": p, "mapped_after_ns": s, "attached_ns": a, "max_gap_ns": max(0, a - s)} for p, s, a in self.late],
        }

    def on_payloads(self, payloads) -> None:
        self.kernels.on_payloads(payloads)

    def on_batch(self, records: np.ndarray) -> None:
        self.kernels.on_batch(records)

    def finish(self, probes, writer) -> None:
        self.kernels.resolve()
        rows = self.kernels.rows()
        if rows:
            writer.put_rows("kernel_names", KERNEL_COLUMNS, rows, replace=True)
