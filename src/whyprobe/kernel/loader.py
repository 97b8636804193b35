"""Load several BPF objects that share one pid filter, one event ring, one payload ring and one stack map.

The first object loaded creates the shared maps; every later one is told to
reuse their fds before its own load. Common rodata (trace_all, nr_cpus, rate
limit, ring sizes) is applied to every object, so each family's programs see
the same configuration.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from whyprobe import clock
from whyprobe.errors import KernelError
from whyprobe.kernel.bpfobject import BpfObject, destroy_links

SHARED_MAPS = ("events", "payloads", "targets", "stacks")
BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"


def bpf_object_path(name: str) -> Path:
    return BPF_DIR / f"{name}.bpf.o"


def _pow2_at_least(n: int, floor: int) -> int:
    size = floor
    while size < n:
        size <<= 1
    return size


class ProbeSet:
    """The BPF side of one trace: objects, shared maps and drop counters."""

    def __init__(
        self,
        *,
        trace_all: bool = False,
        max_events_per_sec: int = 0,
        capture_stacks: bool = False,
        events_ring_bytes: int = 1 << 24,
        payloads_ring_bytes: int = 1 << 22,
        clock_offset_ns: int | None = None,
    ) -> None:
        # What every family adds to the ring's monotonic timestamps: one value per trace.
        self.clock_offset_ns = clock.measure_offset_ns() if clock_offset_ns is None else clock_offset_ns
        page = os.sysconf("SC_PAGE_SIZE")
        self.events_ring_bytes = _pow2_at_least(events_ring_bytes, page)
        self.payloads_ring_bytes = _pow2_at_least(payloads_ring_bytes, page)
        self._common = {
            "trace_all": int(trace_all),
            "tracer_tgid": os.getpid(),
            "nr_cpus": os.cpu_count() or 1,
            "max_events_per_sec": int(max_events_per_sec),
            "capture_stacks": int(capture_stacks),
            "events_ring_bytes": self.events_ring_bytes,
            "payloads_ring_bytes": self.payloads_ring_bytes,
        }
        self.objects: list[BpfObject] = []
        self._shared: dict[str, int] = {}
        self._pending_targets: set[int] = set()
        self._pidset: mmap.mmap | None = None

    def open(self, name: str) -> BpfObject:
        """Open <name>.bpf.o with shared maps and common config applied; caller loads and attaches."""
        obj = BpfObject(bpf_object_path(name))
        try:
            maps = set(obj.map_names())
            for m in SHARED_MAPS:
                if m not in maps:
                    continue
                if m in self._shared:
                    obj.reuse_map(m, self._shared[m])
                elif m == "events":
                    obj.resize_map(m, self.events_ring_bytes)
                elif m == "payloads":
                    obj.resize_map(m, self.payloads_ring_bytes)
            obj.set_rodata(**{k: v for k, v in self._common.items() if k in obj.datasec_vars(".rodata")})
            obj.on_loaded.append(self._learn_shared_maps)
        except BaseException:
            obj.close()
            raise
        self.objects.append(obj)
        return obj

    def _learn_shared_maps(self, obj: BpfObject) -> None:
        """Called by obj.load(): the first object to define a shared map creates it."""
        for m in SHARED_MAPS:
            if m not in self._shared and m in obj.map_names():
                self._shared[m] = obj.map_fd(m)
                if m == "targets":
                    # One byte per tgid (common.bpf.h), written in place: no syscall per pid.
                    self._pidset = mmap.mmap(obj.map_fd(m), obj.map_value_size(m), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        if self._pidset is not None and self._pending_targets:
            pending, self._pending_targets = self._pending_targets, set()
            self.add_targets(pending)

    def _fd(self, name: str) -> int:
        if name not in self._shared:
            raise KernelError(f"no loaded BPF object defines the shared map {name!r}: load a probe family before using it")
        return self._shared[name]

    @property
    def events_fd(self) -> int:
        return self._fd("events")

    @property
    def payloads_fd(self) -> int:
        return self._fd("payloads")

    @property
    def stacks_fd(self) -> int:
        return self._fd("stacks")

    def add_targets(self, pids: Iterable[int]) -> None:
        if self._pidset is None:
            self._pending_targets.update(int(p) for p in pids)
            return
        for pid in pids:
            self._pidset[self._pid_index(pid)] = 1

    def remove_target(self, pid: int) -> None:
        self._pending_targets.discard(int(pid))
        if self._pidset is not None:
            self._pidset[self._pid_index(pid)] = 0

    def is_target(self, pid: int) -> bool:
        if self._pidset is None:
            return int(pid) in self._pending_targets
        return bool(self._pidset[self._pid_index(pid)])

    def _pid_index(self, pid: int) -> int:
        pid = int(pid)
        if not 0 < pid < len(self._pidset):
            raise KernelError(f"pid {pid} cannot be traced: the kernel's pid table holds 1..{len(self._pidset) - 1} (pid_max)")
        return pid

    def drops(self) -> dict:
        """What the kernel side lost, summed over objects, and where.

        ring: events the `events` ring had no room for (the events are gone);
        payload: payload records (paths, argv, addresses, MCP bytes) the
        `payloads` ring had no room for (their events are stored, without detail);
        rate: events over max_events_per_sec. `by_family` and `by_cpu` split
        ring and payload losses by probe family (object) and by CPU, non-zero only.
        """
        ring = rate = payload = 0
        by_family: dict[str, dict[str, int]] = {}
        by_cpu: dict[str, dict[str, int]] = {}
        for obj in self.objects:
            if not obj.loaded:
                continue
            names = obj.datasec_vars(".bss")
            family = obj.path.name.removesuffix(".bpf.o")
            for var, key in (("wp_drops", "events"), ("wp_payload_drops", "payloads")):
                if var not in names:
                    continue
                per_cpu = obj.global_u64s(var)
                total = int(per_cpu.sum())
                if not total:
                    continue
                if key == "events":
                    ring += total
                else:
                    payload += total
                fam = by_family.setdefault(family, {"events": 0, "payloads": 0})
                fam[key] += total
                for cpu in np.flatnonzero(per_cpu).tolist():
                    slot = by_cpu.setdefault(str(cpu), {"events": 0, "payloads": 0})
                    slot[key] += int(per_cpu[cpu])
            if "wp_rate_drops" in names:
                rate += int(obj.global_u64s("wp_rate_drops").sum())
        return {"ring": ring, "rate": rate, "payload": payload, "by_family": by_family, "by_cpu": by_cpu}

    def detach(self) -> None:
        """Destroy every link (objects and maps stay, so rings can still be drained)."""
        destroy_links([link for obj in self.objects for link in obj.take_links()])

    def close(self) -> None:
        if self._pidset is not None:
            self._pidset.close()
            self._pidset = None
        for obj in reversed(self.objects):
            obj.close()
        self.objects.clear()
        self._shared.clear()

    def __enter__(self) -> "ProbeSet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
