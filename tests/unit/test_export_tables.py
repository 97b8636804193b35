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


def _files(out: Path, table: str) -> list[Path]:
    return sorted((out / table).glob("node=*/*.parquet"))


def test_parquet_dataset_has_every_table_with_exact_rows(tmp_path: Path, capsys) -> None:
    db = make_db(tmp_path / "t.db")
    out = tmp_path / "pq"
    assert main(["export", str(db), "--parquet", str(out)]) == 0
    counts = _sqlite_counts(db)
    assert capsys.readouterr().err == f"Wrote {out}/ ({len(counts)} tables, 10 events)\n"
    # THEN DIR/<table>/node=<node>/<trace>.parquet for every table, empty tables with their schema
    assert sorted(p.name for p in out.iterdir()) == sorted(counts)
    node = "t"  # no sessions row: the file stem names the node
    for table, n in counts.items():
        files = _files(out, table)
        assert [f.parent.name for f in files] == [f"node={node}"], table
        assert pq.read_metadata(files[0]).num_rows == n, table
    assert counts["audit_log"] == 0
    assert pq.read_schema(_files(out, "audit_log")[0]).field("allowed").type == pa.int64()
    # AND every row carries its node, events their source and op names; values and types survive
    events = pq.read_table(_files(out, "events")[0]).to_pydict()
    assert events["timestamp"][:2] == [T0, T0 + 1_000]
    assert set(events["node"]) == {node}
    assert ("sched_switch", "HOST") in set(zip(events["op_name"], events["source_name"]))
    assert pq.read_schema(_files(out, "events")[0]).field("detail").type == pa.string()
    # AND duckdb reads the dataset as it is
    glob = f"{out}/events/*/*.parquet"
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning=true)").fetchall() == [(10,)]
    tool_calls = f"{out}/tool_calls/*/*.parquet"
    assert duckdb.sql(f"SELECT tool_name, duration, node FROM '{tool_calls}'").fetchall() == [("read_file", 2_000_000, node)]


def test_parquet_of_an_ingero_cluster_trace_splits_its_nodes(tmp_path: Path, shared_data: Path) -> None:
    # sample-cluster.db stores events.id as TEXT ("node:seq"): the column becomes a string
    out = tmp_path / "pq"
    assert main(["export", str(shared_data / "sample-cluster.db"), "--parquet", str(out)]) == 0
    files = _files(out, "events")
    assert [f.parent.name for f in files] == ["node=gpu-node-01", "node=gpu-node-02", "node=gpu-node-03"]
    assert [pq.read_metadata(f).num_rows for f in files] == [200, 200, 200]
    assert pq.read_schema(files[0]).field("id").type == pa.string()
    assert duckdb.sql(f"SELECT count(*), count(DISTINCT node) FROM '{out}/events/*/*.parquet'").fetchall() == [(600, 3)]
    assert sum(pq.read_metadata(f).num_rows for f in _files(out, "causal_chains")) == 6


def test_parquet_same_trace_again_needs_force_other_traces_add(tmp_path: Path, capsys) -> None:
    db = make_db(tmp_path / "t.db")
    other = make_db(tmp_path / "u.db")
    out = tmp_path / "pq"
    assert main(["export", str(db), "--parquet", str(out)]) == 0
    first = _files(out, "events")
    capsys.readouterr()
    assert main(["export", str(db), "--parquet", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("whyprobe: this trace is already in the dataset, will not overwrite without --force: ")
    assert main(["export", str(db), "--parquet", str(out), "--force"]) == 0
    assert _files(out, "events") == first
    # a different trace of the same node is a second file beside the first, never a replacement
    assert main(["export", str(other), "--parquet", str(out)]) == 0
    assert len(_files(out, "events")) == 2
    assert duckdb.sql(f"SELECT count(*) FROM '{out}/events/*/*.parquet'").fetchall() == [(20,)]


def test_parquet_failure_leaves_the_dataset_as_it_was(tmp_path: Path, monkeypatch, capsys) -> None:
    db = make_db(tmp_path / "t.db")
    out = tmp_path / "pq"
    import whyprobe.export.parquet as parquet

    real = parquet.record_batches

    def fail_on_events(conn, table, schema, *args, **kwargs):
        if table == "events":
            raise OSError(28, "No space left on device")
        return real(conn, table, schema, *args, **kwargs)

    monkeypatch.setattr(parquet, "record_batches", fail_on_events)
    assert main(["export", str(db), "--parquet", str(out)]) == 1
    assert capsys.readouterr().err == f"whyprobe: cannot write {out}: No space left on device\n"
    assert list(out.rglob("*")) == []


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
