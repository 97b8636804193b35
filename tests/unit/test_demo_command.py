"""`whyprobe demo` in-process without tracing: --list, bad input, and the replay fallback when the
privilege check says no (monkeypatched), which must say plainly that it is a replay."""

from __future__ import annotations

import sqlite3

import pytest

from whyprobe.commands import main
from whyprobe.demo import scenarios
from whyprobe.demo.scenarios import replay

NAMES = list(scenarios.SCENARIOS)


@pytest.fixture
def unprivileged(monkeypatch):
    monkeypatch.setattr(replay, "is_privileged", lambda: False)


def test_list_prints_one_line_per_scenario(capsys):
    assert main(["demo", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == NAMES
    assert lines[0].endswith("preempts its kernel launches (default)")
    assert sum("(default)" in line for line in lines) == 1


def test_bad_scenario_is_one_line_and_exit_2(capsys, tmp_path):
    assert main(["demo", "gpu-melts", "--out", str(tmp_path / "x.db")]) == 2
    err = capsys.readouterr().err
    assert err == f"whyprobe: Unknown scenario 'gpu-melts': choose one of {', '.join(NAMES)}\n"
    assert not (tmp_path / "x.db").exists()


def test_bad_duration_is_one_line(capsys, tmp_path):
    assert main(["demo", "clean", "--duration", "soon", "--out", str(tmp_path / "x.db")]) == 2
    assert capsys.readouterr().err.startswith("whyprobe: --duration 'soon': expected a duration")


def test_existing_out_needs_force(capsys, tmp_path, unprivileged):
    out = tmp_path / "x.db"
    out.write_text("precious")
    assert main(["demo", "clean", "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"whyprobe: File exists, will not overwrite without --force: {out}\n"
    assert out.read_text() == "precious"


def test_without_privileges_it_replays_and_says_so(capsys, tmp_path, unprivileged):
    # GIVEN no privileges, WHEN the default scenario is asked for
    out = tmp_path / "d.db"
    assert main(["demo", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # THEN the first line says why and where the recording comes from
    host = sqlite3.connect(out).execute("SELECT hostname FROM sessions").fetchone()[0]
    assert lines[0].startswith(
        "No eBPF here (not root: tracing needs root or CAP_BPF+CAP_PERFMON): replaying a recording of cpu-contention made on " + host
    )
    assert lines[1] == f"Wrote {out} (replay of a recorded run)"
    # AND the replay is explained: the hog is named, and the verdict line says it was found
    assert any(line.startswith("1. [HIGH]") and "mostly by `cpu-hog`" in line for line in lines)
    assert f"Expected {scenarios.get('cpu-contention').expect}: found." in lines
    assert lines[-1] == f"Other scenarios: {', '.join(NAMES[1:])} (whyprobe demo --list)"


def test_replay_flag_replays_even_with_privileges(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(scenarios, "tracing_unavailable", lambda: pytest.fail("--replay must not probe the kernel"))
    assert main(["demo", "sync-wait", "--replay", "--out", str(tmp_path / "s.db")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Replaying as asked (--replay): a recording of sync-wait made on ")
    assert f"Expected {scenarios.get('sync-wait').expect}: found." in out


def test_default_out_is_replaced_on_a_second_run(capsys, tmp_path, monkeypatch, unprivileged):
    # GIVEN a first demo run in a directory, WHEN it runs again without --out
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "clean"]) == 0
    (tmp_path / "whyprobe-demo-clean.db").write_bytes(b"stale")
    assert main(["demo", "clean"]) == 0
    # THEN the demo's own file is replaced by a fresh replay
    assert (tmp_path / "whyprobe-demo-clean.db").read_bytes()[:16] == b"SQLite format 3\0"
    assert "Expected no high-severity finding (no false alarm): found." in capsys.readouterr().out


def test_privilege_check_gates_live_tracing(unprivileged):
    assert scenarios.tracing_unavailable() == "not root: tracing needs root or CAP_BPF+CAP_PERFMON"

