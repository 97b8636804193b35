"""Helpers shared by tests/unit, tests/kernel and tests/e2e (importable as `testkit`: pytest puts
tests/, where the root conftest.py lives, on sys.path)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from typing import Callable, NoReturn

import pytest

from whyprobe.record.capture import READY_LINE


def cannot_run(reason: str) -> NoReturn:
    """Skip the test here; in CI (WHYPROBE_REQUIRE_BPF=1), where kernel tests must run, fail it."""
    if os.environ.get("WHYPROBE_REQUIRE_BPF") == "1":
        pytest.fail(f"cannot run ({reason}) but WHYPROBE_REQUIRE_BPF=1")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], object], timeout: float) -> bool:
    """Whether `cond()` became true within `timeout` seconds (checked every 10 ms, and once more at the end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def wait_for_ready(proc: subprocess.Popen, timeout: float = 60.0) -> list[str]:
    """Block until `proc` (trace, spy, footprint or a live demo, stderr=PIPE) prints READY_LINE.

    Returns the stderr lines before it; the rest of stderr is left for communicate().
    A process that exits or stays silent past `timeout` fails the test with what it said.
    """
    before: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for raw in proc.stderr:
            line = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            if line.rstrip("\n") == READY_LINE:
                ready.set()
                return
            before.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not ready.is_set():
        if proc.poll() is None:
            proc.kill()
        reader.join(5)
        raise AssertionError(f"not ready within {timeout:g} s (exit status {proc.wait()}): {''.join(before)[-2000:]}")
    return before
