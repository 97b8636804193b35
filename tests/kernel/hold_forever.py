"""A tracer that holds a target forever at the open of a library (for test_follow's SIGKILL test).

Usage: hold_forever.py DB PID NAME_PREFIX. Prints "ready", then "holding PID PATH" when the target
opened a file whose base name starts with NAME_PREFIX, and never lets it go.
"""

from __future__ import annotations

import sys
import threading

from whyprobe.probes.base import TargetSpec
from whyprobe.record.session import TraceOptions, TraceSession


class HoldingFamily:
    name = "holding"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def attach(self, probes, targets) -> list[str]:
        return []

    def held_libraries(self) -> list[str]:
        return [self.prefix]

    def on_library(self, pid: int, path: str) -> list[str]:
        print("holding", pid, path, flush=True)
        threading.Event().wait()
        return []

    def on_batch(self, records) -> None:
        return None

    def finish(self, probes, writer) -> None:
        return None


def main() -> None:
    db, pid, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    session = TraceSession(db, [HoldingFamily(prefix)], TargetSpec(pids=[pid]), TraceOptions(snapshots=False))
    session.start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
