"""merge: node per event, clock correction, dedup, and nothing half-written on failure."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from whyprobe.errors import StoreError
from whyprobe.store.merge import merge_traces
from whyprobe.events import EVENT_ROW_DTYPE
from whyprobe.store.writer import Writer

NODES = ("sample-gpu-node-01.db", "sample-gpu-node-02.db", "sample-gpu-node-03.db")


def q(path, sql: str, params: tuple = ()) -> list:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def test_three_nodes_merge_into_the_cluster_trace(shared_data, tmp_path):
    out = tmp_path / "fleet.db"
    summary = merge_traces([shared_data / n for n in NODES], out)
    per_node = "SELECT node, source, op, count(*), sum(duration) FROM events GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    assert q(out, per_node) == q(shared_data / "sample-cluster.db", per_node)
    assert summary["events"] == 600
    assert [(s["node"], s["node_from"], s["clock_skew_ns"]) for s in summary["inputs"]] == [
        ("gpu-node-01", "sessions.node", 0),
        ("gpu-node-02", "sessions.node", 0),
        ("gpu-node-03", "sessions.node", 0),
    ]
    # Same events, timestamps untouched when no skew is known.
    cols = "timestamp, pid, tid, source, op, duration, arg0, arg1, ret_code, stack_hash, cgroup_id, node"
    assert q(out, f"SELECT {cols} FROM events ORDER BY timestamp, node, tid") == q(
        shared_data / "sample-cluster.db", f"SELECT {cols} FROM events ORDER BY timestamp, node, tid"
    )
    # Stacks deduplicated by hash: node-02 and node-03 share one.
    assert q(out, "SELECT count(*) FROM stack_traces") == [(9,)]
    assert q(out, "SELECT node, count(*) FROM sessions GROUP BY node") == [("gpu-node-01", 1), ("gpu-node-02", 1), ("gpu-node-03", 1)]
    assert q(out, "SELECT node, clock_skew_ns, skew_from FROM merge_inputs ORDER BY idx") == [
        ("gpu-node-01", 0, "none"),
        ("gpu-node-02", 0, "none"),
        ("gpu-node-03", 0, "none"),
    ]


def test_process_names_are_kept_per_node(shared_data, tmp_path):
    out = tmp_path / "fleet.db"
    merge_traces([shared_data / n for n in NODES], out)
    # pid 96 is a different kernel thread on node-01 and node-02: only the per-node table names it.
    assert q(out, "SELECT node, name FROM process_names_by_node WHERE pid = 96 ORDER BY node") == [
        ("gpu-node-01", "jbd2/nvme1n1p1-8"),
        ("gpu-node-02", "jbd2/nvme0n1p1-8"),
    ]
    assert q(out, "SELECT count(*) FROM process_names WHERE pid = 96") == [(0,)]
    assert q(out, "SELECT name FROM process_names WHERE pid = 4599") == [("python3",)]
    assert q(out, "SELECT count(*) FROM process_names_by_node") == [(16,)]


def test_clock_skew_override_shifts_one_node(shared_data, tmp_path):
    plain, shifted = tmp_path / "a.db", tmp_path / "b.db"
    merge_traces([shared_data / n for n in NODES], plain)
    merge_traces([shared_data / n for n in NODES], shifted, clock_skew_ns={"gpu-node-02": 1_500_000})
    sql = "SELECT timestamp FROM events WHERE node = ? ORDER BY timestamp, tid, duration"
    a2, b2 = np.array(q(plain, sql, ("gpu-node-02",))), np.array(q(shifted, sql, ("gpu-node-02",)))
    assert np.array_equal(b2, a2 - 1_500_000)
    assert q(plain, sql, ("gpu-node-01",)) == q(shifted, sql, ("gpu-node-01",))
    assert q(shifted, "SELECT clock_skew_ns, skew_from FROM merge_inputs WHERE node = 'gpu-node-02'") == [(1_500_000, "override")]
    with pytest.raises(StoreError, match="--clock-skew names no input node: gpu-node-09"):
        merge_traces([shared_data / NODES[0]], tmp_path / "c.db", clock_skew_ns={"gpu-node-09": 1})


def test_whyprobe_inputs_use_session_node_and_skew(tmp_path):
    # GIVEN two whyprobe traces whose sessions say node and clock skew
    paths = []
    for i, skew in enumerate((0, 2_000)):
        rows = np.zeros(5, EVENT_ROW_DTYPE)
        rows["timestamp"] = 10**18 + np.arange(5) * 10
        rows["source"], rows["op"], rows["pid"], rows["tid"] = 1, 3, 100, 100
        path = tmp_path / f"host{i}.db"
        with Writer(path, session={"node": f"host-{i}", "clock_skew_ns": skew}) as w:
            w.put_events(rows)
            w.put_rows("process_names", ["pid", "name"], [(100, f"trainer{i}")])
        paths.append(path)
    out = tmp_path / "fleet.db"
    merge_traces(paths, out)
    assert q(out, "SELECT node, min(timestamp), count(*) FROM events GROUP BY node") == [
        ("host-0", 10**18, 5),
        ("host-1", 10**18 - 2_000, 5),
    ]
    assert q(out, "SELECT node, sum(count) FROM event_aggregates GROUP BY node") == [("host-0", 5), ("host-1", 5)]
    # Sessions renumbered, events follow them.
    assert q(out, "SELECT e.node, s.node, s.clock_skew_ns FROM events e JOIN sessions s ON s.id = e.session_id GROUP BY e.node") == [
        ("host-0", "host-0", 0),
        ("host-1", "host-1", 0),
    ]
    # pid 100 means two different processes: no fleet-wide name for it.
    assert q(out, "SELECT count(*) FROM process_names") == [(0,)]
    assert q(out, "SELECT node, name FROM process_names_by_node ORDER BY node") == [("host-0", "trainer0"), ("host-1", "trainer1")]


def test_file_stem_names_a_node_without_facts(shared_data, tmp_path):
    out = tmp_path / "fleet.db"
    merge_traces([shared_data / "pytorch-dataloader-starvation.db", shared_data / NODES[0]], out)
    assert q(out, "SELECT node, count(*) FROM events GROUP BY node") == [("gpu-node-01", 200), ("pytorch-dataloader-starvation", 3807)]
    assert q(out, "SELECT node_from FROM merge_inputs ORDER BY idx") == [("file name",), ("sessions.node",)]


@pytest.mark.parametrize("bad", ["missing", "corrupt"])
def test_bad_input_leaves_nothing_at_out(shared_data, tmp_path, bad):
    victim = tmp_path / "bad.db"
    if bad == "corrupt":
        victim.write_bytes(np.random.default_rng(1).bytes(8192))
    out = tmp_path / "fleet.db"
    with pytest.raises(StoreError) as exc:
        merge_traces([shared_data / NODES[0], victim], out)
    expected = f"No such database: {victim}" if bad == "missing" else f"Not a readable SQLite database: {victim} (file is not a database)"
    assert str(exc.value) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == (["bad.db"] if bad == "corrupt" else [])


def test_failure_while_writing_removes_the_temp_file(shared_data, tmp_path, monkeypatch):
    import whyprobe.store.transfer as transfer

    def explode(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(transfer, "_copy_aggregates", explode)
    out = tmp_path / "fleet.db"
    out.write_bytes(b"previous")
    with pytest.raises(StoreError) as exc:
        merge_traces([shared_data / n for n in NODES], out, force=True)
    assert str(exc.value) == f"Cannot write database: {out} (disk I/O error)"
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.db"]


def test_refuses_existing_out_and_input_as_out(shared_data, tmp_path):
    out = tmp_path / "fleet.db"
    out.write_bytes(b"x")
    with pytest.raises(StoreError, match="File exists, will not overwrite without --force"):
        merge_traces([shared_data / NODES[0]], out)
    with pytest.raises(StoreError, match="Output would overwrite an input"):
        merge_traces([out], out, force=True)


def test_merge_keeps_findings_mcp_tables_and_audit_rows_with_ids_remapped(tmp_path):
    from export_synth import FINDING_SUMMARY, make_db

    a, b = make_db(tmp_path / "node-a.db"), make_db(tmp_path / "node-b.db")
    for path in (a, b):
        with sqlite3.connect(path) as conn:
            conn.execute("INSERT INTO audit_log(timestamp, client, tool, args_digest, allowed) VALUES (1, 'c', 'run_sql', 'd', 1)")
            conn.execute(
                "INSERT INTO mcp_messages(id, timestamp, connection, transport, direction, jsonrpc_id, method, kind, size, payload, request_id)"
                " VALUES (2, 5, 'c1', 'http', 'server->client', '7', NULL, 'response', 10, '{}', 1)"
            )
    out = tmp_path / "fleet.db"
    summary = merge_traces([a, b], out)
    assert summary["warnings"] == []
    assert q(out, "SELECT node, summary FROM findings ORDER BY id") == [("node-a", FINDING_SUMMARY), ("node-b", FINDING_SUMMARY)]
    assert q(out, "SELECT node, count(*) FROM audit_log GROUP BY node") == [("node-a", 1), ("node-b", 1)]
    # message ids moved past node-a's, and each response still points at its own request
    assert q(out, "SELECT id, node, kind, request_id FROM mcp_messages ORDER BY id") == [
        (1, "node-a", "request", None), (2, "node-a", "response", 1), (3, "node-b", "request", None), (4, "node-b", "response", 3),
    ]  # fmt: skip
    assert q(out, "SELECT id, node, request_msg, tool_name FROM tool_calls ORDER BY id") == [(1, "node-a", 1, "read_file"), (2, "node-b", 3, "read_file")]
    # the event each call links to is that node's cudaMalloc (its id renumbered in the merge)
    linked = q(out, "SELECT c.node, e.node, e.pid, e.source, e.op FROM tool_call_events l JOIN tool_calls c ON c.id = l.call_id JOIN events e ON e.id = l.event_id ORDER BY c.id")
    assert linked == [("node-a", "node-a", 300, 1, 1), ("node-b", "node-b", 300, 1, 1)]


def test_two_traces_of_one_host_are_warned_about_and_can_be_named_apart(tmp_path):
    paths = []
    for i in range(2):
        rows = np.zeros(3, EVENT_ROW_DTYPE)
        rows["timestamp"] = 10**18 + np.arange(3)
        path = tmp_path / f"run{i}.db"
        with Writer(path, session={"node": "gpu-7"}) as w:
            w.put_events(rows)
        paths.append(path)
    summary = merge_traces(paths, tmp_path / "same.db")
    assert summary["warnings"] == [
        f"2 inputs are node 'gpu-7' ({paths[0]}, {paths[1]}): their events share that node; name them apart with --node DB=NAME"
    ]
    merge_traces(paths, tmp_path / "apart.db", node_names={str(paths[1]): "gpu-7-rerun"})
    assert q(tmp_path / "apart.db", "SELECT node, count(*) FROM events GROUP BY node") == [("gpu-7", 3), ("gpu-7-rerun", 3)]
    assert q(tmp_path / "apart.db", "SELECT node_from FROM merge_inputs ORDER BY idx") == [("sessions.node",), ("--node",)]
    with pytest.raises(StoreError, match="--node names no input database: nope.db"):
        merge_traces(paths, tmp_path / "x.db", node_names={"nope.db": "n"})


def test_merge_cli_prints_the_shared_node_warning(tmp_path, capsys):
    from whyprobe.commands import main

    paths = []
    for i in range(2):
        with Writer(tmp_path / f"r{i}.db", session={"node": "box"}) as w:
            w.put_events(np.zeros(1, EVENT_ROW_DTYPE))
        paths.append(str(tmp_path / f"r{i}.db"))
    assert main(["merge", *paths, "--out", str(tmp_path / "m.db")]) == 0
    assert "whyprobe: warning: 2 inputs are node 'box'" in capsys.readouterr().err
    assert main(["merge", *paths, "--out", str(tmp_path / "n.db"), "--node", "bogus"]) == 2
    assert capsys.readouterr().err == "whyprobe: --node wants DB=NAME (e.g. a.db=gpu-node-01), got 'bogus'\n"
