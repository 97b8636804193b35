"""On-CPU samples of traced threads (bpf/profile.bpf.c): what a thread runs in a GPU gap or an on-CPU slow call.

One perf event per online CPU on the CPU clock (PERF_COUNT_SW_CPU_CLOCK)
fires SAMPLE_HZ times a second whatever runs there; the BPF program keeps
only traced tgids (the shared pid filter), so untraced work costs one
inlined array lookup per tick and CPU. Samples carry the user stack (shared
`stacks` map) and the CPython frames (pystacks.bpf.h): the stacks family
symbolizes both, so `trace` adds it whenever this family is on.
"""

from __future__ import annotations

import errno
import os

import numpy as np

from whyprobe.kernel import caps
from whyprobe.kernel.bpfobject import BpfObject
from whyprobe.kernel.libbpf import BpfError
from whyprobe.kernel.perf import perf_event_open_cpu_clock
from whyprobe.kernel.loader import ProbeSet
from whyprobe.probes.base import TargetSpec

# 99 rather than 100 Hz: a round rate would beat against timers that run at 100 Hz
# and sample the same moments of a periodic loop over and over.
SAMPLE_HZ = 99
ONLINE_CPUS = "/sys/devices/system/cpu/online"


def online_cpus(text: str | None = None) -> list[int]:
    """CPU numbers of a cpulist such as "0-3,6" (default: the online CPUs of this host)."""
    if text is None:
        try:
            with open(ONLINE_CPUS) as f:
                text = f.read()
        except OSError:
            return list(range(os.cpu_count() or 1))
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


class ProfileFamily:
    """ProbeFamily `profile`: CPU-clock samples of traced threads with native and Python stacks."""

    name = "profile"

    def __init__(self, *, hz: int = SAMPLE_HZ, required: bool = False) -> None:
        self.hz = hz
        # When the user asked for it by name, a failure ends the trace; on by default, it warns.
        self.required = required
        self.obj: BpfObject | None = None
        self.cpus = 0

    @property
    def period_ns(self) -> int:
        return 1_000_000_000 // self.hz

    def attach(self, probes: ProbeSet, targets: TargetSpec) -> list[str]:
        # The probe `check` reports decides here too.
        if not caps.can("perf_event"):
            why = caps.probe_capabilities().get("perf_event", {}).get("detail", "")
            if self.required:
                raise BpfError("attach perf_event", "profile", errno.EOPNOTSUPP, f"perf_event programs do not work here: {why}")
            return [f"profile: no on-CPU samples (perf_event programs do not work here: {why})"]
        try:
            obj = probes.open("profile")
            obj.set_rodata(sample_period_ns=self.period_ns)
            obj.load()
            self.obj = obj
            for cpu in online_cpus():
                obj.attach_perf_event("handle_sample", perf_event_open_cpu_clock(cpu, self.period_ns))
                self.cpus += 1
        except BpfError as exc:
            if self.required:
                raise
            if self.obj is not None:
                self.obj.detach_all()
            self.cpus = 0
            return [f"profile: no on-CPU samples ({exc})"]
        return []

    def on_batch(self, records: np.ndarray) -> None:
        return None

    def flags(self) -> dict:
        return {"profile": {"hz": self.hz, "period_ns": self.period_ns, "cpus": self.cpus}}

    def finish(self, probes: ProbeSet, writer: object) -> None:
        return None
