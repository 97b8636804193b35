"""Kernel names learned while tracing: which kernel each launch's function handle stands for.

Two ways a launch names its kernel (FACTS-cuda-cpython.md 1.6):

* Runtime launches (cudaLaunchKernel & co) pass the host stub of the kernel:
  the pointer lies in a mapped file, and the symbol it points into (.symtab,
  else .dynsym) is the kernel's C++ name, demangled. CUDA 13 stubs launch a
  cudaKernel_t that (__)cudaGetKernel returned for the stub: that handle takes
  the stub's name.
* Driver launches (cuLaunchKernel, what Triton and JIT code use) pass a
  CUfunction that cuModuleGetFunction / cuLibraryGetKernel returned for a name,
  or that cuKernelGetFunction derived from such a CUkernel: the CUDA probes
  record those calls (handle out in arg1, name as a SYMBOL payload).

The mapping a stub points into is noted while the process is alive; the ELF
file is read at the end of the trace, off the ring-draining thread (a
framework library's symbol table takes seconds to parse).
"""

from __future__ import annotations

import bisect
import numpy as np

from whyprobe.demangle import demangle
from whyprobe.events import PayloadKind, Source
from whyprobe.kernel.ring import PayloadBatch
from whyprobe.probes.pyframes import Mapping, read_maps, read_mem
from whyprobe.probes.stacks import symbolize_native

RUNTIME_LAUNCH_OPS = (3, 13)  # cudaLaunchKernel, cudaLaunchKernelExC (arg0 = host stub or cudaKernel_t)
GET_KERNEL_OP = 25  # cudaGetKernel / __cudaGetKernel: arg0 = host stub, arg1 = cudaKernel_t
GET_FUNCTION, GET_KERNEL, KERNEL_FUNCTION = 15, 16, 17  # driver ops in events.py
_VIA = {GET_FUNCTION: "cuModuleGetFunction", GET_KERNEL: "cuLibraryGetKernel", KERNEL_FUNCTION: "cuKernelGetFunction"}
COLUMNS = ("pid", "handle", "name", "via")
NAME_MAX = 4096


def _signed(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


class KernelNames:
    """(pid, handle) -> (name, via) for the launches of a trace."""

    def __init__(self) -> None:
        self.names: dict[tuple[int, int], tuple[str, str]] = {}
        self._seen: set[tuple[int, int]] = set()
        self._pending: dict[tuple[int, int], Mapping] = {}
        self._maps: dict[int, list[Mapping]] = {}
        self._symbols: dict[tuple[int, int], bytes] = {}  # (tid, ts) -> name of a driver lookup
        self._derived: dict[tuple[int, int], tuple[int, int]] = {}  # CUfunction -> CUkernel not named yet
        self._stub_of: dict[tuple[int, int], tuple[int, int]] = {}  # cudaKernel_t -> host stub

    def on_payloads(self, payloads: PayloadBatch) -> None:
        hdr = payloads.hdr
        for i in np.flatnonzero(hdr["kind"] == PayloadKind.SYMBOL).tolist():
            self._symbols[(int(hdr["tid"][i]), int(hdr["ts_ns"][i]))] = payloads.data(i)
        if len(self._symbols) > 65536:  # payloads whose events were dropped
            self._symbols.clear()

    def on_batch(self, records: np.ndarray) -> None:
        gpu = records[(records["source"] == Source.CUDA) | (records["source"] == Source.DRIVER)]
        if not len(gpu):
            return
        launches = gpu[(gpu["source"] == Source.CUDA) & np.isin(gpu["op"], RUNTIME_LAUNCH_OPS)]
        if len(launches):
            for pid, ptr in set(zip(launches["pid"].tolist(), launches["arg0"].tolist())):
                if (pid, ptr) not in self._seen:
                    self._seen.add((pid, ptr))
                    self._locate(pid, ptr)
        stubs = gpu[(gpu["source"] == Source.CUDA) & (gpu["op"] == GET_KERNEL_OP) & (gpu["ret"] == 0)]
        for pid, stub, handle in zip(stubs["pid"].tolist(), stubs["arg0"].tolist(), stubs["arg1"].tolist()):
            if (pid, stub) not in self._seen:
                self._seen.add((pid, stub))
                self._locate(pid, stub)
            if handle != stub:
                self._stub_of[(pid, handle)] = (pid, stub)
        lookups = gpu[(gpu["source"] == Source.DRIVER) & np.isin(gpu["op"], tuple(_VIA)) & (gpu["ret"] == 0)]
        for r in lookups:
            self._driver(int(r["op"]), int(r["pid"]), int(r["tid"]), int(r["ts_ns"]), int(r["arg0"]), int(r["arg1"]), int(r["arg2"]))

    def _driver(self, op: int, pid: int, tid: int, ts: int, handle_in: int, handle_out: int, name_ptr: int) -> None:
        via = _VIA[op]
        if op == KERNEL_FUNCTION:
            known = self.names.get((pid, handle_in))
            if known:
                self.names[(pid, handle_out)] = (known[0], via)
            else:
                self._derived[(pid, handle_out)] = (pid, handle_in)
            return
        raw = self._symbols.pop((tid, ts), b"")
        if not raw and name_ptr:
            # The payload was lost (ring full): the string is still in the caller's memory.
            raw = read_mem(pid, name_ptr, 512).split(b"\0", 1)[0]
        if not raw:
            return
        name = demangle(raw.decode("utf-8", "replace"))
        self.names[(pid, handle_out)] = (name, via)
        for fn, kernel in [(f, k) for f, k in self._derived.items() if k == (pid, handle_out)]:
            self.names[fn] = (name, _VIA[KERNEL_FUNCTION])
            del self._derived[fn]

    def note_maps(self, pid: int) -> None:
        """Remember what `pid` maps now: a short-lived process may be gone when its launches are drained."""
        maps = read_maps(pid)
        if maps:
            self._maps[pid] = maps

    def _locate(self, pid: int, ptr: int) -> None:
        for fresh in (False, True):
            if fresh or pid not in self._maps:
                self.note_maps(pid)
            maps = self._maps.get(pid, [])
            i = bisect.bisect_right([m.start for m in maps], ptr) - 1
            if i >= 0 and ptr < maps[i].end:
                if maps[i].path.startswith("/"):
                    self._pending[(pid, ptr)] = maps[i]
                return

    def resolve(self) -> None:
        """Read the symbols of the files the stubs point into (call off the draining thread)."""
        pending, self._pending = self._pending, {}
        for (pid, ptr), m in pending.items():
            frame = symbolize_native(pid, [ptr], maps=[m])[0]
            name = frame["s"]
            if name.startswith("0x") or "+0x" in name:
                continue
            self.names[(pid, ptr)] = (name, "symbols of " + m.path.removesuffix(" (deleted)"))
        for handle, stub in self._stub_of.items():
            if stub in self.names and handle not in self.names:
                self.names[handle] = (self.names[stub][0], "cudaGetKernel of a stub in " + self.names[stub][1].removeprefix("symbols of "))

    def rows(self) -> list[tuple[int, int, str, str]]:
        return [(pid, _signed(handle), name, via) for (pid, handle), (name, via) in sorted(self.names.items())]


__all__ = ["COLUMNS", "KernelNames"]
