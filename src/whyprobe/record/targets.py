"""What `trace`, `spy` and `footprint` check and do with their targets before and while tracing:
permission to trace, that --pid processes exist, that --out can be written, launching --cmd held
before exec, and whether a process is still alive."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from whyprobe.errors import CommandError

def can_trace() -> bool:
    """The capabilities that load BPF programs and attach tracepoints/uprobes (what `check` reports)."""
    from whyprobe.kernel.caps import privileged

    return privileged()


def check_out(out: Path, force: bool) -> None:
    """Raise CommandError unless a database can be written at `out` (existing only with force)."""
    if out.is_dir():
        raise CommandError(f"Cannot write database: {out} (it is a directory)")
    if out.exists() and not force:
        raise CommandError(f"File exists, will not overwrite without --force: {out}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise CommandError(f"Cannot write database: {out} (no such directory: {parent})")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise CommandError(f"Cannot write database: {out} (permission denied)")


def check_pids(pids: list[int]) -> None:
    """Raise CommandError for the first pid that is not a running process."""
    for pid in pids:
        if pid <= 0 or not Path(f"/proc/{pid}").is_dir():
            raise CommandError(f"No such process: {pid} (check the pid with `ps -p {pid}`)")


# Runs in the child: wait for "go" on the pipe (probes attached), then become the command.
_HOLD = """
import os, sys
fd = int(sys.argv[1])
go = os.read(fd, 3)
os.close(fd)
if go != b"go\\n":
    sys.exit(125)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.stderr.write(f"whyprobe: cannot run {sys.argv[2]}: {exc.strerror}\\n")
    sys.exit(127)
"""


def start_held(cmd: list[str]) -> tuple[subprocess.Popen, int]:
    """Start `cmd` held before exec, so probes attach before its first instruction.

    Returns (child, write end of the hold pipe): write b"go\\n" to it to let the command run, or
    close it without writing and the child exits 125 without running the command."""
    r, w = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _HOLD, str(r), *cmd], pass_fds=(r,))
    except OSError as exc:
        os.close(w)
        raise CommandError(f"Cannot start {cmd[0]}: {exc.strerror}") from None
    finally:
        os.close(r)
    return child, w


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def finish_child(child) -> int | None:
    """Exit status of a launched command; one still running (the trace ended first) is stopped."""
    if child is None:
        return None
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return child.returncode
