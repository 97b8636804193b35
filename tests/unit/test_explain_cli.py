"""`whyprobe explain` through main([...]): JSON, windows, errors, findings history."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from explain_synth import MS, T0, hog_scenario, launch_loop, preempted, write_db

from whyprobe.commands import main
from whyprobe.commands.explain import resolve_bound

S = 1_000_000_000
INGERO = Path(__file__).resolve().parents[3] / "shared" / "data" / "pytorch-dataloader-starvation.db"


def _spread_db(tmp_path: Path) -> Path:
    """30 s of launches with one preempted slow call every 2 s (slow calls at ~1 s, 3 s, ..., 29 s)."""
    events = []
    for k in range(15):
        calls, spans = launch_loop(40, slow={20: 9 * MS}, start=T0 + k * 2 * S + S - 20 * MS)
        events += calls + [preempted(s + 200_000, 8 * MS) for s, _ in spans]
    return write_db(tmp_path / "spread.db", events)


def test_json_output_parses_and_follows_the_contract(tmp_path, capsys):
    db = write_db(tmp_path / "t.db", hog_scenario())
    assert main(["explain", str(db), "--json", "--no-store"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["database"] == str(db) and doc["complete"] is True
    assert doc["findings"][0]["causes"][0]["blockers"][0]["comm"] == "hog"


def test_text_output_reads_like_an_explanation(tmp_path, capsys):
    db = write_db(tmp_path / "t.db", hog_scenario())
    assert main(["explain", str(db), "--no-store"]) == 0
    out = capsys.readouterr().out
    assert "10 of 10 slow cudaLaunchKernel call(s) on `engine` (tid 101, pid 100) were off-CPU for 8.50 ms on average, mostly by `hog` (tid 201, pid 200) on CPU 3" in out
    assert "fix: Keep `hog` (tid 201, pid 200) off CPU 3, where `engine` (tid 101, pid 100) runs: give" in out
    assert "- off_cpu: 85.0 ms over 10 call(s) — hog (pid 200, tid 201, CPU 3) 85.0 ms" in out


def test_since_until_offsets_restrict_the_window(tmp_path, capsys):
    db = _spread_db(tmp_path)
    assert main(["explain", str(db), "--json", "--no-store", "--since", "10s", "--until", "20s"]) == 0
    doc = json.loads(capsys.readouterr().out)
    first = T0 + S - 20 * MS
    assert doc["window"] == {"start_ns": first + 10 * S, "end_ns": first + 20 * S}
    tail = next(f for f in doc["findings"] if f["kind"] == "tail")
    assert tail["slow_calls"] == 5  # the slow calls at ~11, 13, 15, 17, 19 s
    assert all(doc["window"]["start_ns"] <= s["timestamp_ns"] < doc["window"]["end_ns"] for s in tail["slowest"])


def test_bad_database_is_one_line_and_exit_1(tmp_path, capsys):
    bad = tmp_path / "notes.db"
    bad.write_text("not a database at all\n" * 100)
    assert main(["explain", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("whyprobe: Not a readable SQLite database:") and err.count("\n") == 1
    assert main(["explain", str(tmp_path / "missing.db")]) == 1
    assert capsys.readouterr().err == f"whyprobe: No such database: {tmp_path / 'missing.db'}\n"


def test_bad_bounds_say_how_to_fix(tmp_path, capsys):
    db = _spread_db(tmp_path)
    assert main(["explain", str(db), "--since", "10"]) == 2  # a malformed value is a usage error
    assert "add a unit, e.g. 10s" in capsys.readouterr().err
    assert main(["explain", str(db), "--since", "20s", "--until", "10s"]) == 1
    assert "--until must be after --since" in capsys.readouterr().err


def test_findings_history_grows_and_never_overwrites(tmp_path, capsys):
    db = _spread_db(tmp_path)
    assert main(["explain", str(db), "--until", "10s"]) == 0
    assert "Stored" in capsys.readouterr().err
    with sqlite3.connect(db) as conn:
        first = conn.execute("SELECT id, finding_key, window_end, body FROM findings ORDER BY id").fetchall()
    assert first
    assert main(["explain", str(db)]) == 0
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, finding_key, window_end, body FROM findings ORDER BY id").fetchall()
    assert rows[: len(first)] == first  # the first run's rows are untouched
    later = rows[len(first):]
    assert later and all(r[2] > first[0][2] for r in later)  # new rows cover the longer window
    assert {r[1] for r in later} & {r[1] for r in first}  # the same finding, seen again, is a new row


def test_ingero_database_is_not_written(capsys):
    before = INGERO.stat().st_mtime_ns
    assert main(["explain", str(INGERO), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["flavor"] == "ingero"
    assert "Ingero database; findings not stored (--no-store implied)" in captured.err
    assert INGERO.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10s", 1_000 + 10 * S), ("250ms", 1_000 + 250 * MS), ("1.5m", 1_000 + 90 * S), ("2026-03-20T14:06:20Z", 1_774_015_580 * S),
     ("2026-03-20T15:06:20+01:00", 1_774_015_580 * S), ("1774015580000000000", 1_774_015_580 * S)],
)
def test_bounds(text, expected):
    assert resolve_bound(text, 1_000, "--since") == expected
