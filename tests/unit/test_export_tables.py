"""Parquet and DuckDB table copies, read back with pyarrow and duckdb."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from export_synth import T0, make_db
from whyprobe.commands import main
from whyprobe.export.duckdb_backend import to_duckdb

duckdb = pytest.importorskip("duckdb")


def _sqlite_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def test_parquet_has_every_table_with_exact_rows(tmp_path: Path, capsys) -> None:
    db = make_db(tmp_path / "t.db")
    out = tmp_path / "pq"
    assert main(["export", str(db), "--parquet", str(out)]) == 0
    counts = _sqlite_counts(db)
    assert capsys.readouterr().err == f"Wrote {out}/ ({len(counts)} tables, 10 events)\n"
    # THEN one file per table, empty tables included with their schema
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.parquet" for t in counts)
    for table, n in counts.items():
        assert pq.read_metadata(out / f"{table}.parquet").num_rows == n, table
    assert counts["audit_log"] == 0
    assert pq.read_schema(out / "audit_log.parquet").field("allowed").type == pa.int64()
    # AND values and types survive
    events = pq.read_table(out / "events.parquet").to_pydict()
    assert events["timestamp"][:2] == [T0, T0 + 1_000]
    assert pq.read_schema(out / "events.parquet").field("detail").type == pa.string()
    # AND duckdb reads the files directly
    assert duckdb.sql(f"SELECT count(*) FROM '{out}/events.parquet'").fetchall() == [(10,)]
    assert duckdb.sql(f"SELECT tool_name, duration FROM '{out}/tool_calls.parquet'").fetchall() == [("read_file", 2_000_000)]


def test_parquet_of_an_ingero_trace(tmp_path: Path, shared_data: Path) -> None:
    # sample-cluster.db stores events.id as TEXT ("node:seq"): the column becomes a string
    out = tmp_path / "pq"
    assert main(["export", str(shared_data / "sample-cluster.db"), "--parquet", str(out)]) == 0
    assert pq.read_schema(out / "events.parquet").field("id").type == pa.string()
    assert duckdb.sql(f"SELECT count(*), count(DISTINCT node) FROM '{out}/events.parquet'").fetchall() == [(600, 3)]
    assert pq.read_metadata(out / "causal_chains.parquet").num_rows == 6


def test_parquet_into_an_existing_empty_dir_but_not_a_full_one(tmp_path: Path, capsys) -> None:
    db = make_db(tmp_path / "t.db")
    out = tmp_path / "pq"
    out.mkdir()
    assert main(["export", str(db), "--parquet", str(out)]) == 0
    capsys.readouterr()
    assert main(["export", str(db), "--parquet", str(out)]) == 1
    assert capsys.readouterr().err == f"whyprobe: Directory is not empty, will not overwrite without --force: {out}\n"
    assert main(["export", str(db), "--parquet", str(out), "--force"]) == 0
    assert (out / "events.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pq", "t.db"]


def test_parquet_failure_leaves_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    db = make_db(tmp_path / "t.db")
    import whyprobe.export.parquet as parquet

    real = parquet.record_batches

    def fail_on_events(conn, table, schema, *args):
        if table == "events":
            raise OSError(28, "No space left on device")
        return real(conn, table, schema, *args)

    monkeypatch.setattr(parquet, "record_batches", fail_on_events)
    assert main(["export", str(db), "--parquet", str(tmp_path / "pq")]) == 1
    assert capsys.readouterr().err == f"whyprobe: cannot write {tmp_path / 'pq'}: No space left on device\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.db"]


def test_duckdb_copy(tmp_path: Path, capsys) -> None:
    db = make_db(tmp_path / "t.db")
    out = tmp_path / "t.duckdb"
    assert main(["export", str(db), "--duckdb", str(out)]) == 0
    assert capsys.readouterr().err.startswith(f"Wrote {out} (")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.db", "t.duckdb"]
    con = duckdb.connect(str(out), read_only=True)
    try:
        for table, n in _sqlite_counts(db).items():
            assert con.execute(f'SELECT count(*) FROM "{table}"').fetchall() == [(n,)], table
        # the host_events view works as in SQLite
        rows = con.execute("SELECT comm, op, count(*) FROM host_events GROUP BY comm, op ORDER BY comm, op").fetchall()
        assert ("loader", "block_read", 1) in rows and ("trainer", "sched_switch", 2) in rows
    finally:
        con.close()


def test_to_duckdb_api_on_an_ingero_trace(tmp_path: Path, shared_data: Path) -> None:
    rows = to_duckdb(shared_data / "pytorch-dataloader-starvation.db", tmp_path / "i.duckdb")
    assert rows["events"] == 3807 and rows["causal_chains"] == 316
    con = duckdb.connect(str(tmp_path / "i.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM events WHERE source = 3 AND op = 1").fetchall() == [(3676,)]
    finally:
        con.close()
