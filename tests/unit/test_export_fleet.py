"""Many nodes export into one Parquet DIR; ClickHouse's engine (chdb) and DuckDB read it as one
dataset and agree with each node's own database."""

from __future__ import annotations

import json
from pathlib import Path

import chdb
import duckdb
import pytest

from whyprobe.analyze.stats import op_stats
from whyprobe.commands import main
from whyprobe.store.reader import open_trace

NODES = ("gpu-node-01", "gpu-node-02", "gpu-node-03")


@pytest.fixture
def dataset(tmp_path: Path, shared_data: Path) -> Path:
    out = tmp_path / "fleet"
    for node in NODES:
        assert main(["export", str(shared_data / f"sample-{node}.db"), "--parquet", str(out)]) == 0
    return out


def _own_stats(shared_data: Path) -> dict[tuple[str, str], dict]:
    stats = {}
    for node in NODES:
        with open_trace(shared_data / f"sample-{node}.db") as db:
            for row in op_stats(db):
                stats[(node, row["op"])] = row
    return stats


def test_clickhouse_reads_the_fleet_as_it_is(dataset: Path, shared_data: Path) -> None:
    own = _own_stats(shared_data)
    sql = (
        "SELECT node, op_name, count() AS n, quantileExactInclusive(0.99)(duration) AS p99 "
        f"FROM file('{dataset}/events/*/*.parquet', Parquet) GROUP BY node, op_name ORDER BY node, op_name"
    )
    rows = [json.loads(line) for line in chdb.query(sql, "JSONEachRow").bytes().decode().splitlines()]
    # THEN every (node, op) of every node's own database, with its exact count and p99
    assert {(r["node"], r["op_name"]) for r in rows} == set(own)
    for r in rows:
        mine = own[(r["node"], r["op_name"])]
        assert int(r["n"]) == mine["count"]
        assert int(float(r["p99"])) == mine["p99_ns"], (r, mine["p99_ns"])
    # AND per-node totals match, each node in its own hive partition
    per_node = chdb.query(
        f"SELECT _path LIKE '%/node=' || node || '/%' AS in_own_partition, node, count() FROM file('{dataset}/events/*/*.parquet', Parquet) "
        "GROUP BY 1, 2 ORDER BY 2", "CSV"
    ).bytes().decode().split()
    assert per_node == [f'1,"{n}",200' for n in NODES]


def test_duckdb_reads_the_same_dataset(dataset: Path, shared_data: Path) -> None:
    own = _own_stats(shared_data)
    rows = duckdb.sql(
        "SELECT node, op_name, source_name, count(*), quantile_cont(duration, 0.99) "
        f"FROM read_parquet('{dataset}/events/*/*.parquet', hive_partitioning=true) GROUP BY ALL"
    ).fetchall()
    assert {(n, op): (c, int(p99)) for n, op, _src, c, p99 in rows} == {k: (v["count"], v["p99_ns"]) for k, v in own.items()}
    assert all(src for _n, _op, src, _c, _p in rows)


def test_a_merged_trace_and_its_nodes_form_the_same_partitions(tmp_path: Path, shared_data: Path) -> None:
    merged = tmp_path / "fleet.db"
    assert main(["merge", *(str(shared_data / f"sample-{n}.db") for n in NODES), "--out", str(merged)]) == 0
    out = tmp_path / "pq"
    assert main(["export", str(merged), "--parquet", str(out)]) == 0
    assert sorted(p.name for p in (out / "events").iterdir()) == [f"node={n}" for n in NODES]
    # the node-qualified process names of the merge are the dataset's process_names
    names = duckdb.sql(f"SELECT DISTINCT node FROM '{out}/process_names/*/*.parquet' ORDER BY 1").fetchall()
    assert [n for (n,) in names] == list(NODES)
    assert not (out / "process_names_by_node").exists()
