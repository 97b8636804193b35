"""Option parsing and target checks shared by the recording commands (trace, spy, footprint)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator, Optional

from whyprobe.errors import CommandError, UsageError
from whyprobe.record.targets import can_trace, check_pids
from whyprobe.units import UnitError, parse_duration_ns, parse_size

# The kernel copies at most 1024 chunks of 4 KiB per call (bpf/wire.bpf.c).
MAX_CAPTURE = 4 << 20


def duration_s(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    try:
        return parse_duration_ns(text) / 1e9
    except UnitError as exc:
        raise UsageError(f"Invalid --duration {text!r}: {exc}") from None


def ring_bytes(text: str) -> int:
    try:
        size = parse_size(text)
    except UnitError as exc:
        raise UsageError(f"Invalid --ring {text!r}: {exc}") from None
    if size < 4096:
        raise CommandError(f"Invalid --ring {text!r}: at least 4KiB")
    return size


def message_cap(text: str) -> int:
    try:
        cap = parse_size(text)
    except UnitError as exc:
        raise UsageError(f"Invalid --max-message {text!r}: {exc}") from None
    if not 0 < cap <= MAX_CAPTURE:
        raise CommandError(f"Invalid --max-message {text!r}: between 1 byte and 4MiB (what the kernel copies per call)")
    return cap


def payload_ring_bytes(cap: int) -> int:
    """Room for a whole message at both ends (writer and reader) twice over, between two drains."""
    return 1 << max(22, (4 * cap - 1).bit_length())


@contextmanager
def stdout_to_stderr(active: bool) -> Iterator[None]:
    """With --json, stdout carries one JSON document: while recording, what lands on fd 1 (the
    launched program's output, which inherits it) goes to stderr instead."""
    if not active:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def check_op(op: str | None, trace, *extra: str) -> None:
    """An --op no source defines is a typo, not an empty result: say so and name the ops the trace has."""
    if op is None:
        return
    names = trace.op_names()
    if op in set(names.values()) | set(extra):
        return
    present = {names.get(key, f"{key[0]}:{key[1]}") for key in trace.conn.execute("SELECT DISTINCT source, op FROM events")}
    raise UsageError(f"unknown op {op!r}; the ops in {trace.path}: {', '.join(sorted(present | set(extra))) or 'none (no events)'}")


def _note_options_after_cmd(args: list[str], name: str) -> None:
    """`spy --cmd -- agent --out x.db` hands --out to the agent: legal, but rarely meant."""
    from typer._click.globals import get_current_context

    ctx = get_current_context(silent=True)
    if ctx is None or not args:
        return
    ours = {opt for param in ctx.command.params for opt in getattr(param, "opts", ()) if opt.startswith("--") and opt != "--cmd"}
    passed = [a for a in args[1:] if a.split("=", 1)[0] in ours]
    if passed:
        print(f"whyprobe: note: {' '.join(passed)} after `--` go to {args[0]}, not to whyprobe {name}; "
              f"whyprobe's options go before --cmd", file=sys.stderr)


def check_targets(pid: list[int], cmd: bool, args: list[str], name: str, *, all_procs: bool = False) -> None:
    """--pid / --cmd / --all consistency, privileges and pids, before any work."""
    if cmd and not args:
        example = "python train.py" if name == "trace" else "python client.py"
        raise CommandError(f"--cmd needs a command after `--`: whyprobe {name} --cmd -- {example}")
    if args and not cmd:
        raise CommandError(f"Unexpected argument {args[0]!r}: to launch a command use --cmd -- {' '.join(args)}")
    _note_options_after_cmd(args, name)
    if sum((bool(pid), cmd, all_procs)) > 1:
        raise CommandError("Choose one of --pid, --cmd or --all" if name == "trace" else "Choose one of --pid or --cmd")
    if not can_trace():
        if os.geteuid() == 0:
            raise CommandError(
                f"whyprobe {name} needs CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN): this process is root "
                "but its capabilities are dropped (capsh --drop, setpriv, a container); run it with them"
            )
        raise CommandError(f"whyprobe {name} needs root (or CAP_BPF+CAP_PERFMON): run with sudo")
    check_pids(pid)
