"""`whyprobe trace --stack` end to end: a CUDA call made from work.py line N is stored with that Python frame."""

from __future__ import annotations

import json
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest

from cuda_helpers import REAL_CUDART
from whyprobe.commands import main

pytestmark = pytest.mark.usefixtures("bpf_required")

WORK = textwrap.dedent(
    f"""
    import ctypes, time
    lib = ctypes.CDLL("{REAL_CUDART}")

    def step(n):
        p = ctypes.c_void_p()
        return lib.cudaMalloc(ctypes.byref(p), ctypes.c_size_t(n))

    for i in range(5):
        step(4096)
    time.sleep(0.3)  # native frames are symbolized from the live process's maps (see README, known limits)
    """
)
CALL_LINE = WORK.splitlines().index("    return lib.cudaMalloc(ctypes.byref(p), ctypes.c_size_t(n))") + 1


def _trace_script(work: Path, code: str, capsys) -> sqlite3.Connection:
    """`trace --stack` a Python script calling the real libcudart; the stored trace."""
    work.write_text(code)
    out = work.with_suffix(".db")
    rc = main(["trace", "--stack", "--probes", "cuda,stacks", "--lib", str(REAL_CUDART), "--out", str(out), "--quiet",
               "--cmd", "--", sys.executable, str(work)])
    assert rc == 0, capsys.readouterr().err
    return sqlite3.connect(out)


def test_cuda_call_stack_names_the_python_line(tmp_path: Path, capsys) -> None:
    con = _trace_script(tmp_path / "work.py", WORK, capsys)
    rows = con.execute(
        "SELECT e.ret_code, s.frames FROM events e JOIN stack_traces s ON s.hash = e.stack_hash "
        "WHERE e.source = 1 AND e.op = 1"
    ).fetchall()
    assert len(rows) == 5 and {r[0] for r in rows} == {35}
    frames = json.loads(rows[-1][1])
    py = [f for f in frames if f.get("py")]
    assert py[0]["f"].endswith("work.py") and py[0]["l"] == CALL_LINE and py[0]["s"].endswith("step")
    assert any(f.get("s") == "cudaMalloc" for f in frames if not f.get("py"))


EAGER = textwrap.dedent(
    f"""
    import ctypes
    lib = ctypes.CDLL("{REAL_CUDART}")

    def step(n):
        p = ctypes.c_void_p()
        return lib.cudaMalloc(ctypes.byref(p), ctypes.c_size_t(n))

    for i in range(200):
        step(4096 + i)
    """
)
EAGER_LINE = EAGER.splitlines().index("    return lib.cudaMalloc(ctypes.byref(p), ctypes.c_size_t(n))") + 1


def test_every_call_carries_its_python_frames_from_the_first_to_the_last(tmp_path: Path, capsys) -> None:
    # GIVEN a launched Python workload that calls cudaMalloc 200 times as soon as it starts and
    # exits right after (no sleep for the tracer: #14.4, the first calls used to lose their frames)
    con = _trace_script(tmp_path / "eager.py", EAGER, capsys)
    # THEN every one of the 200 calls has the Python frame step() at the call's line, then <module>
    rows = con.execute(
        "SELECT e.arg0, s.frames FROM events e LEFT JOIN stack_traces s ON s.hash = e.stack_hash "
        "WHERE e.source = 1 AND e.op = 1 ORDER BY e.timestamp"
    ).fetchall()
    assert [r[0] for r in rows] == [4096 + i for i in range(200)]
    for size, raw in rows:
        py = [f for f in json.loads(raw or "[]") if f.get("py")]
        assert [(Path(f["f"]).name, f["s"]) for f in py] == [("eager.py", "step"), ("eager.py", "<module>")], size
        assert py[0]["l"] == EAGER_LINE, size
