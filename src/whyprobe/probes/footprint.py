"""The footprint family: every syscall of the traced set as its own event (bpf/footprint.bpf.c).

Loaded next to the syscalls family, which keeps emitting the telling syscalls
with their paths and addresses; this one emits the rest, so that each syscall
of a traced thread is exactly one SYSCALL event and a tool call's window can
count them and sum their time exactly.
"""

from __future__ import annotations

import numpy as np

from whyprobe.kernel.loader import ProbeSet
from whyprobe.probes.base import TargetSpec


class FootprintFamily:
    name = "footprint"

    def __init__(self, *, mmap_exec_only: bool = True) -> None:
        self.mmap_exec_only = mmap_exec_only  # must match the syscalls family's setting
        self.obj = None

    def attach(self, probes: ProbeSet, targets: TargetSpec) -> list[str]:
        obj = probes.open("footprint")
        obj.set_rodata(mmap_exec_only=int(self.mmap_exec_only))
        obj.load()
        obj.attach("handle_sys_enter")
        obj.attach("handle_sys_exit")
        self.obj = obj
        return []

    def on_batch(self, records: np.ndarray) -> None:
        return None

    def finish(self, probes: ProbeSet, writer: object) -> None:
        return None
