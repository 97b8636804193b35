"""import-ingero: every event, name and side table survives the conversion."""

from __future__ import annotations

import sqlite3

import pytest

from whyprobe.analyze.stats import op_stats
from whyprobe.errors import StoreError
from whyprobe.store.ingero import import_ingero
from whyprobe.store.reader import open_trace
from whyprobe.store.writer import Writer


def q(path, sql: str, params: tuple = ()) -> list:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@pytest.fixture
def converted(shared_data, tmp_path):
    src = shared_data / "pytorch-dataloader-starvation.db"
    out = tmp_path / "converted.db"
    summary = import_ingero(src, out)
    return src, out, summary


def test_counts_per_source_op_are_unchanged(converted):
    src, out, summary = converted
    per_op = "SELECT source, op, count(*), sum(duration), sum(ret_code != 0) FROM events GROUP BY source, op"
    assert q(out, per_op) == q(src, per_op)
    assert summary["events"] == 3807
    # Same rows, same ids, same values column by column.
    cols = "id, timestamp, pid, tid, source, op, duration, gpu_id, arg0, arg1, ret_code, stack_hash, cgroup_id"
    assert q(out, f"SELECT {cols} FROM events ORDER BY id") == q(src, f"SELECT {cols} FROM events ORDER BY id")
    assert q(out, "SELECT DISTINCT cpu, node, session_id FROM events") == [(-1, "", 1)]


def test_stats_of_the_converted_db_equal_the_original(converted):
    src, out, _ = converted
    with open_trace(src) as a, open_trace(out) as b:
        before, after = op_stats(a), op_stats(b)
    assert b.flavor == "whyprobe"
    strip = lambda stats: {(s["source_id"], s["op_id"]): {k: v for k, v in s.items() if k != "op"} for s in stats}  # noqa: E731
    assert strip(after) == strip(before)
    # Ops our registry knows get our names; the rest keep Ingero's.
    names = {(s["source_id"], s["op_id"]): s["op"] for s in after}
    assert names[(1, 5)] == "cudaStreamSynchronize" and names[(1, 6)] == "cudaDeviceSynchronize"
    assert q(out, "SELECT name FROM ops WHERE source_id = 3 AND op_id IN (10, 11, 12) ORDER BY op_id") == [
        ("pod_restart",),
        ("pod_eviction",),
        ("pod_oom_kill",),
    ]


def test_side_tables_are_carried_over(converted):
    src, out, summary = converted
    for table, cols in (
        ("stack_traces", "hash, ips, frames"),
        ("process_names", "pid, name, seen_at"),
        ("system_snapshots", "timestamp, cpu_pct, mem_pct, mem_avail, swap_mb, load_avg"),
        ("cgroup_metadata", "cgroup_id, container_id, cgroup_path, pod_name, namespace"),
        ("event_aggregates", "bucket, source, op, pid, count, stored, sum_dur, min_dur, max_dur, sum_arg0"),
    ):
        assert q(out, f"SELECT {cols} FROM {table} ORDER BY 1, 2, 3") == q(src, f"SELECT {cols} FROM {table} ORDER BY 1, 2, 3"), table
    assert summary["causal_chains"] == 316
    assert q(out, "SELECT id, detected_at, severity, summary, timeline FROM ingero_causal_chains ORDER BY id") == q(
        src, "SELECT id, detected_at, severity, summary, timeline FROM causal_chains ORDER BY id"
    )
    (session,) = q(out, "SELECT started_at, stopped_at, gpu_model, cuda_ver, json_extract(flags, '$.ingero_ver'), json_extract(flags, '$.flags') FROM sessions")
    (orig,) = q(src, "SELECT started_at, stopped_at, gpu_model, cuda_ver, ingero_ver, flags FROM sessions")
    assert session == orig
    info = dict(q(out, "SELECT key, value FROM schema_info"))
    assert info["producer"] == "whyprobe" and info["imported_from"] == str(src.resolve())


def test_cluster_file_keeps_its_nodes(shared_data, tmp_path):
    out = tmp_path / "c.db"
    summary = import_ingero(shared_data / "sample-cluster.db", out)
    per_node = "SELECT node, source, op, count(*) FROM events GROUP BY 1, 2, 3"
    assert q(out, per_node) == q(shared_data / "sample-cluster.db", per_node)
    assert summary["sessions"] == 3
    # Text ids cannot be kept; events are renumbered in time order.
    assert q(out, "SELECT min(id), max(id) FROM events") == [(1, 600)]
    # Each event belongs to the session (node) that recorded it.
    assert q(out, "SELECT count(*) FROM events e JOIN sessions s ON s.id = e.session_id WHERE s.node = e.node") == [(600,)]


def test_refuses_to_overwrite_without_force(converted, shared_data):
    src, out, _ = converted
    out.write_bytes(b"keep me")
    with pytest.raises(StoreError) as exc:
        import_ingero(src, out)
    assert str(exc.value) == f"File exists, will not overwrite without --force: {out}"
    assert out.read_bytes() == b"keep me"
    import_ingero(src, out, force=True)
    assert q(out, "SELECT count(*) FROM events") == [(3807,)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["converted.db"]


def test_refuses_a_whyprobe_input(tmp_path):
    ours = tmp_path / "ours.db"
    Writer(ours).close()
    with pytest.raises(StoreError, match="Already a whyprobe database, nothing to import"):
        import_ingero(ours, tmp_path / "x.db")
    assert not (tmp_path / "x.db").exists()
