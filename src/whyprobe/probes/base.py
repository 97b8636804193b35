"""What a probe family (cuda, sched, block, net, syscalls, proc, stacks, wire) gives the trace session.

The session (record/session.py) owns the shared ProbeSet (one pid filter, one
event ring, one payload ring, one stack map), drains the rings and writes
rows. A family only loads and attaches its own BPF object and, where it keeps
state in maps or needs user-space context, hooks into the batch stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from whyprobe.kernel.loader import ProbeSet
    from whyprobe.store.writer import Writer


@dataclass
class TargetSpec:
    """What to trace: explicit pids (children follow), or every process."""

    pids: list[int] = field(default_factory=list)
    trace_all: bool = False
    # Libraries the target will load, resolved as its dynamic linker would (for --cmd).
    library_paths: list[str] = field(default_factory=list)
    # The launched command's argv (--cmd): its executable can be probed before it runs.
    command: list[str] = field(default_factory=list)


class ProbeFamily(Protocol):
    name: str

    def attach(self, probes: "ProbeSet", targets: TargetSpec) -> list[str]:
        """Load this family's object into `probes` and attach; return warnings (e.g. symbols skipped)."""

    def on_batch(self, records: np.ndarray) -> None:
        """See every drained batch of EVENT_DTYPE records (e.g. to enroll children, name processes)."""

    def finish(self, probes: "ProbeSet", writer: "Writer") -> None:
        """At the end of the trace: flush in-kernel aggregates and user-space state to the writer."""


# Optional hooks the session calls when a family defines them:
#   tick(pids) -> list[str]          every 0.2 s on the main thread (new libraries, new pythons)
#   on_payloads(list[(hdr, data)])   every drained payload record (reader thread)
#   on_rows(rows)                    every batch after conversion to events.EVENT_ROW_DTYPE, before it is written
#   on_stacks(list[(pid, hash, ips)]) user stacks seen for the first time
#   checkpoint(writer)               every 5 s: write cumulative in-kernel aggregates
#   flags() -> dict                  merged into sessions.flags at the end
