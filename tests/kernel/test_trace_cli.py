"""`whyprobe trace` from the command line: a --cmd run on the stand-in runtime, drops printed,
and every kind of bad input refused with one line before anything is attached."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from whyprobe.commands import main
from whyprobe.demo.build import build_workloads
from whyprobe.probes.cuda import RUNTIME_SYMBOLS

ROOT = Path(__file__).resolve().parents[2]


def _trace(tmp_path, *args):
    return main(["trace", "--probes", "cuda", "--out", str(tmp_path / "t.db"), *args])


def test_cmd_run_records_every_call_and_prints_next_steps(bpf_required, tmp_path, capsys):
    w = build_workloads()
    rc = _trace(tmp_path, "--quiet", "--lib", str(w.cudart), "--cmd", "--", str(w.driver), str(w.cudart), "cudaMalloc=1000", "cudaLaunchKernel=300")
    out = capsys.readouterr().out
    assert rc == 0
    assert out.splitlines()[-1] == f"Wrote {tmp_path / 't.db'} (1,300 events, 0 dropped)"
    conn = sqlite3.connect(tmp_path / "t.db")
    assert conn.execute("SELECT op, count(*) FROM events GROUP BY op ORDER BY op").fetchall() == [(1, 1000), (3, 300)]
    # the held child exec'd the command: one pid for the whole run, named by the command
    assert conn.execute("SELECT DISTINCT pid FROM events").fetchall() == conn.execute("SELECT DISTINCT pid FROM thread_names").fetchall()
    assert conn.execute("SELECT DISTINCT comm FROM thread_names").fetchall() == [("cuda_workload",)]


def test_cmd_run_without_lib_attaches_what_the_linker_would_load(bpf_required, tmp_path, capsys, monkeypatch):
    # GIVEN the stand-in reachable only through LD_LIBRARY_PATH, loaded by soname by the command
    w = build_workloads()
    monkeypatch.setenv("LD_LIBRARY_PATH", str(w.lib_dir))
    # WHEN traced without --lib
    rc = _trace(tmp_path, "--json", "--cmd", "--", str(w.driver), "libcudart.so.12", "cudaFree=77")
    # THEN the library the child's linker picks was attached before it ran: no call missed
    assert rc == 0
    doc = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert doc["ops"]["cudaFree"]["count"] == 77 and doc["command_exit_status"] == 0
    flags = json.loads(sqlite3.connect(tmp_path / "t.db").execute("SELECT flags FROM sessions").fetchone()[0])
    assert {"path": str(w.cudart), "via": "LD_LIBRARY_PATH", "symbols": len(RUNTIME_SYMBOLS), "missing": []} in flags["cuda_libraries"]


def test_ring_overflow_is_printed(bpf_required, tmp_path, capsys):
    w = build_workloads()
    rc = _trace(tmp_path, "--quiet", "--ring", "4KiB", "--lib", str(w.cudart), "--cmd", "--", str(w.driver), str(w.cudart), "cudaFree=100000")
    assert rc == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    m = re.fullmatch(
        r"Wrote .* \(([\d,]+) events, ([\d,]+) dropped\) - drops: ring ([\d,]+), rate limit 0, writer queue ([\d,]+)"
        r" \(cuda_session ([\d,]+); (cpu\d+ [\d,]+(?:, cpu\d+ [\d,]+)*)\)", line)
    assert m, line
    events, dropped, ring, _, family = (int(g.replace(",", "")) for g in m.group(1, 2, 3, 4, 5))
    assert dropped > 0 and events + dropped == 100000
    # THEN the losses are said per family and per CPU, and add up
    per_cpu = [int(c.split()[1].replace(",", "")) for c in m.group(6).split(", ")]
    assert family == ring == sum(per_cpu)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--pid", "999999"], "whyprobe: No such process: 999999 (check the pid with `ps -p 999999`)"),
        (["--lib", "/nope", "--pid", "1"], "whyprobe: No such library: /nope"),
        (["--probes", "cuda,bogus", "--pid", "1"], "whyprobe: Unknown probe family 'bogus': valid ones are "),
        (["--duration", "soon", "--pid", "1"], "whyprobe: Invalid --duration 'soon': expected a duration like 30s, 250ms, 5m or 1h"),
        (["--cmd"], "whyprobe: --cmd needs a command after `--`: whyprobe trace --cmd -- python train.py"),
    ],
)
def test_bad_input_is_one_line(bpf_required, tmp_path, capsys, args, message):
    rc = _trace(tmp_path, *args)
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and err.startswith(message)
    assert not (tmp_path / "t.db").exists()


def test_unwritable_and_existing_out(bpf_required, tmp_path, capsys):
    assert main(["trace", "--pid", "1", "--out", str(tmp_path / "no/dir/t.db")]) == 1
    assert capsys.readouterr().err == f"whyprobe: Cannot write database: {tmp_path / 'no/dir/t.db'} (no such directory: {tmp_path / 'no/dir'})\n"
    (tmp_path / "t.db").write_text("precious")
    assert _trace(tmp_path, "--pid", "1") == 1
    assert capsys.readouterr().err == f"whyprobe: File exists, will not overwrite without --force: {tmp_path / 't.db'}\n"
    assert (tmp_path / "t.db").read_text() == "precious"


def test_lib_that_is_not_cuda_is_refused(bpf_required, tmp_path, capsys):
    libc = next(p for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6") if Path(p).exists())
    assert _trace(tmp_path, "--lib", libc, "--pid", "1") == 1
    assert capsys.readouterr().err == f"whyprobe: {libc} defines none of the CUDA functions whyprobe probes (not a libcudart/libcuda?)\n"


def test_not_root_is_one_line(bpf_required, tmp_path, as_nobody):
    res = subprocess.run(
        as_nobody([sys.executable, "-m", "whyprobe", "trace", "--pid", "1", "--out", "/tmp/whyprobe-nobody.db"]),
        capture_output=True, text=True, cwd="/", timeout=60,
    )
    assert res.returncode == 1
    assert res.stderr == "whyprobe: whyprobe trace needs root (or CAP_BPF+CAP_PERFMON): run with sudo\n"
