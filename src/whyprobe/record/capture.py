"""Run a trace session until the launched command exits, the targets are gone, time is up,
or Ctrl-C/SIGTERM — the loop `trace`, `spy` and `footprint` share."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional, Sequence

from whyprobe.errors import WhyprobeError
from whyprobe.probes.base import TargetSpec
from whyprobe.record.session import TraceOptions, TraceSession, TraceSummary
from whyprobe.record.targets import alive, finish_child, start_held


@dataclass
class Capture:
    """What a capture did: the session summary, the launched command's exit status, who was traced."""

    summary: TraceSummary
    command_status: Optional[int]
    pids: list[int]
    warnings: list[str] = field(default_factory=list)


# Printed once on stderr when the probes are attached and recording: scripts and tests
# wait for this line instead of sleeping (DESIGN.md).
READY_LINE = "whyprobe: ready (probes attached)"


def announce_ready() -> None:
    sys.stderr.write(READY_LINE + "\n")
    sys.stderr.flush()


def session_argv() -> str:
    return shlex.join(["whyprobe", *sys.argv[1:]])


def capture(
    out: Path,
    families: Sequence[Any],
    targets: TargetSpec,
    options: TraceOptions,
    cmd: Sequence[str] = (),
    seconds: Optional[float] = None,
    *,
    until_idle: bool = True,
    on_started: Callable[[TraceSession, list[str]], None] | None = None,
    on_tick: Callable[[TraceSession], None] | None = None,
    view: Callable[[TraceSession], ContextManager] | None = None,
) -> Capture:
    """Trace `targets` (or the launched `cmd`, held until the probes are attached) into `out`."""
    child = hold = None
    if cmd:
        child, hold = start_held(list(cmd))
        targets = TargetSpec(pids=[child.pid], trace_all=targets.trace_all, library_paths=targets.library_paths, command=list(cmd))
    session = TraceSession(out, families, targets, options)
    for fam in families:
        if hasattr(fam, "bind"):
            fam.bind(lambda: session.writer)
    try:
        warnings = session.start()
    except WhyprobeError as exc:
        if child is not None:
            os.close(hold)  # the held child reads EOF and exits without running the command
            child.wait()
        raise WhyprobeError(f"Cannot start tracing: {exc}") from None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    announce_ready()
    if hold is not None:
        os.write(hold, b"go\n")
        os.close(hold)
    if on_started is not None:
        on_started(session, warnings)
    deadline = time.monotonic() + seconds if seconds else None

    def finished() -> bool:
        if on_tick is not None:
            on_tick(session)
        if deadline is not None and time.monotonic() >= deadline:
            return True
        if child is not None:
            return child.poll() is not None
        return until_idle and not targets.trace_all and not any(alive(p) for p in session.pids)

    try:
        with view(session) if view is not None else nullcontext():
            session.run(finished, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        summary = session.stop()
    return Capture(summary, finish_child(child), session.pids, warnings)


def scratch_db() -> Path:
    """A path for a database nobody asked to keep (remove it with remove_db)."""
    fd, path = tempfile.mkstemp(prefix="whyprobe-", suffix=".db")
    os.close(fd)
    os.unlink(path)
    return Path(path)


def remove_db(path: Path) -> None:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            p.unlink(missing_ok=True)
        except OSError as exc:
            raise WhyprobeError(f"Cannot overwrite {p}: {exc.strerror}") from None
