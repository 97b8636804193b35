"""Run a scenario for real: its processes under a real trace, with the live view, into a database."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from whyprobe.demo.scenarios import workload
from whyprobe.demo.scenarios.catalog import PROBES, get
from whyprobe.errors import WhyprobeError

DEFAULT_DURATION_S = 4.0
# How long past its own duration a workload may take before the trace gives up on it.
GRACE_S = 15.0


@dataclass(frozen=True)
class RunFacts:
    """What a live run knows that the database alone does not say outright."""

    db: Path
    workload_pid: int
    hog_pid: int  # 0 when the scenario has no hog
    cpu: int
    events: int
    dropped: int
    workload_output: str


def check_out(out: Path, force: bool) -> None:
    """Refuse an output we cannot or should not write, with the reason, before any work."""
    try:
        if out.is_dir():
            raise WhyprobeError(f"Cannot write database: {out} (it is a directory)")
        if out.exists() and not force:
            raise WhyprobeError(f"File exists, will not overwrite without --force: {out}")
        if not out.parent.is_dir():
            raise WhyprobeError(f"Cannot write database: {out} (no such directory: {out.parent})")
    except OSError as exc:
        raise WhyprobeError(f"Cannot write database: {out} ({exc.strerror})") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise WhyprobeError(f"Cannot write database: {out} (permission denied)")


def remove_db(out: Path) -> None:
    for p in (out, Path(f"{out}-wal"), Path(f"{out}-shm")):
        p.unlink(missing_ok=True)


def run_scenario(
    name: str, out: Path, *, console: Console | None = None, duration_s: float = DEFAULT_DURATION_S, force: bool = False
) -> Path:
    """Trace scenario `name` for real into `out` (root + eBPF), showing the live view on `console`."""
    return record(name, out, console=console, duration_s=duration_s, force=force).db


def record(
    name: str, out: Path, *, console: Console | None = None, duration_s: float = DEFAULT_DURATION_S, force: bool = False
) -> RunFacts:
    """run_scenario, returning the facts of the run (pids, CPU, counts) for tests and recordings."""
    from whyprobe import probes as registry
    from whyprobe.probes.base import TargetSpec
    from whyprobe.record.capture import announce_ready
    from whyprobe.record.session import TraceOptions, TraceSession
    from whyprobe.ui.live import LiveView

    scenario = get(name)
    out = Path(out)
    check_out(out, force)
    if scenario.kind == "footprint":
        return _record_footprint(out, force)
    console = console or Console(stderr=True)
    binaries = workload.build()
    cpu = workload.demo_cpu()
    hog = proc = None
    # The data file sits next to the output: O_DIRECT needs a real disk, and /tmp may be tmpfs.
    with tempfile.TemporaryDirectory(prefix=".whyprobe-demo-", dir=out.parent) as tmp:
        io_file = Path(tmp) / "dataset.bin"
        if scenario.io_file_mb:
            workload.write_io_file(io_file, scenario.io_file_mb)
        args = [a.format(cpu=cpu, io_file=io_file) for a in scenario.args]
        try:
            if scenario.hog:
                hog = workload.start_hog(binaries, cpu)
            proc = workload.start_held(binaries, args, scenario.env, duration_s)
            if force:
                remove_db(out)
            families = registry.families(PROBES, cuda={"libraries": [(str(binaries.runtime.cudart), "demo")]})
            options = TraceOptions(session_fields={"argv": f"whyprobe demo {name}"})
            session = TraceSession(out, families, TargetSpec(pids=[proc.pid]), options)
            for w in session.start():
                console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
            deadline = time.monotonic() + duration_s + GRACE_S
            stop = threading.Event()
            try:
                workload.release(proc)
                with _stop_on_interrupt(stop):
                    announce_ready()  # once Ctrl-C ends the run cleanly
                    with LiveView(session.snapshot, str(out), console):
                        session.run(lambda: proc.poll() is not None or time.monotonic() > deadline, stop)
                if not console.is_terminal:  # rich leaves the last frame of a non-terminal Live unterminated
                    console.line()
            finally:
                summary = session.stop()
            if stop.is_set():  # Ctrl-C: what was recorded so far is kept and explained
                workload.stop(proc)
                return RunFacts(out, proc.pid, hog.pid if hog else 0, cpu, summary.events, summary.dropped, "")
            if proc.poll() is None:
                raise WhyprobeError(f"{workload.BINARY} did not finish within {duration_s + GRACE_S:g} s")
            output, errors = proc.communicate()
            if proc.returncode != 0:
                raise WhyprobeError(f"{workload.BINARY} failed (exit status {proc.returncode}): {errors.strip()}")
            return RunFacts(out, proc.pid, hog.pid if hog else 0, cpu, summary.events, summary.dropped, output)
        finally:
            workload.stop(proc)
            workload.stop(hog)


@contextlib.contextmanager
def _stop_on_interrupt(stop: threading.Event):
    """Ctrl-C / SIGTERM end the run cleanly (probes detached, database complete), as in `trace`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _record_footprint(out: Path, force: bool) -> RunFacts:
    """The MCP scenario, through `whyprobe footprint --cmd` in a child process (its output is ours)."""
    import sqlite3
    import subprocess
    import sys

    from whyprobe.demo.scenarios import mcp

    with tempfile.TemporaryDirectory(prefix=".whyprobe-demo-", dir=out.parent) as tmp:
        notes = mcp.write_notes(Path(tmp) / "notes")
        cmd = [sys.executable, "-m", "whyprobe", "footprint", "--out", str(out), *(["--force"] if force else []),
               "--cmd", "--", *mcp.client_command(notes)]
        res = subprocess.run(cmd, stdin=subprocess.DEVNULL, timeout=120)
    if res.returncode != 0:
        raise WhyprobeError(f"whyprobe footprint failed (exit status {res.returncode}); see its message above")
    conn = sqlite3.connect(f"file:{out}?mode=ro", uri=True)
    try:
        events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        dropped = conn.execute("SELECT COALESCE(SUM(ring_drops + queue_drops + rate_drops), 0) FROM sessions").fetchone()[0]
    finally:
        conn.close()
    return RunFacts(out, 0, 0, -1, int(events), int(dropped), "")
