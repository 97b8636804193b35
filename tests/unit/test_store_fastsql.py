"""The C bulk path gives exactly what executemany/fetchall give, and steps aside when unsure."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from whyprobe.errors import StoreError
from whyprobe.store import fastsql


def _db(tmp_path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(tmp_path / "f.db")
    con.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b INTEGER, c INTEGER)")
    return con


def test_compiled_helper_is_present() -> None:
    # make builds it; without it every bulk path silently falls back, so say so loudly here
    assert fastsql._lib is not None, "store/_fastsql.so missing: run `make native`"


def test_insert_and_select_match_the_python_path(tmp_path: Path) -> None:
    con = _db(tmp_path)
    rng = np.random.default_rng(1)
    rows = np.column_stack([np.arange(50_000), rng.integers(-2**63, 2**63 - 1, 50_000), rng.integers(0, 9, 50_000)])
    con.execute("BEGIN")  # the C path runs inside the caller's transaction, like the writer's
    assert fastsql.insert_i64(con, "INSERT INTO t VALUES (?, ?, ?)", rows)
    con.execute("COMMIT")
    assert con.execute("SELECT a, b, c FROM t ORDER BY a").fetchall() == [tuple(r) for r in rows.tolist()]
    got = fastsql.select_i64(con, "SELECT a, b, c FROM t WHERE c >= ? ORDER BY a", [4], 3)
    want = np.array(con.execute("SELECT a, b, c FROM t WHERE c >= 4 ORDER BY a").fetchall(), np.int64)
    assert np.array_equal(got, want)
    assert fastsql.select_i64(con, "SELECT a FROM t WHERE a < 0", [], 1).shape == (0, 1)


def test_steps_aside_when_unsure(tmp_path: Path) -> None:
    mem = sqlite3.connect(":memory:")
    assert fastsql.select_i64(mem, "SELECT 1", [], 1) is None  # no file to verify the handle against
    con = _db(tmp_path)
    assert fastsql.select_i64(con, "SELECT a FROM t WHERE b = ?", ["text"], 1) is None  # non-integer parameter


def test_failure_is_a_sentence_and_the_transaction_rolls_back(tmp_path: Path) -> None:
    con = _db(tmp_path)
    con.execute("BEGIN")
    with pytest.raises(StoreError, match=r"^Cannot write events: UNIQUE constraint failed: t\.a"):
        fastsql.insert_i64(con, "INSERT INTO t VALUES (?, ?, ?)", np.array([[1, 2, 3], [1, 2, 3]]))
    con.execute("ROLLBACK")
    assert con.execute("SELECT count(*) FROM t").fetchone() == (0,)
