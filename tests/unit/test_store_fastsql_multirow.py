"""The C bulk insert's multi-row statements: same rows, same errors, and only for plain single-tuple INSERTs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from whyprobe.errors import StoreError
from whyprobe.store import fastsql


def _db(tmp_path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(tmp_path / "m.db")
    con.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b INTEGER, c INTEGER)")
    return con


def test_single_tuple_insert_is_repeated_and_other_forms_are_left_alone() -> None:
    assert fastsql._many_rows("INSERT INTO t(a, b) VALUES (?, 7)", 3) == "INSERT INTO t(a, b) VALUES (?, 7), (?, 7), (?, 7)"
    assert fastsql._many_rows("INSERT INTO t SELECT ?, ?, ?", 3) is None
    assert fastsql._many_rows("INSERT INTO t VALUES (?, ?, ?), (?, ?, ?)", 3) is None


@pytest.mark.parametrize("per", [1, 7, 64])
def test_every_row_lands_once_whatever_the_rows_per_statement(tmp_path: Path, per: int) -> None:
    con = _db(tmp_path)
    rows = np.column_stack([np.arange(1000), np.arange(1000) * 3, np.arange(1000) % 5])  # 1000 = 142 * 7 + 6: a remainder
    con.execute("BEGIN")
    assert fastsql.insert_i64(con, "INSERT INTO t VALUES (?, ?, ?)", rows, rows_per_statement=per)
    con.execute("COMMIT")
    assert con.execute("SELECT a, b, c FROM t ORDER BY a").fetchall() == [tuple(r) for r in rows.tolist()]


def test_a_conflict_inside_a_multi_row_statement_fails_with_the_same_sentence(tmp_path: Path) -> None:
    con = _db(tmp_path)
    rows = np.column_stack([np.arange(200), np.zeros(200, np.int64), np.zeros(200, np.int64)])
    rows[100, 0] = 5  # a duplicate key in the second 64-row statement
    con.execute("BEGIN")
    with pytest.raises(StoreError, match=r"^Cannot write events: UNIQUE constraint failed: t\.a"):
        fastsql.insert_i64(con, "INSERT INTO t VALUES (?, ?, ?)", rows)
    con.execute("ROLLBACK")
    assert con.execute("SELECT count(*) FROM t").fetchone() == (0,)
