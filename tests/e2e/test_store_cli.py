"""The store commands through the real CLI entry point: stats, import-ingero, merge."""

from __future__ import annotations

import json
import sqlite3

import pytest

from whyprobe.analyze.stats import op_stats
from whyprobe.commands import main
from whyprobe.store.reader import open_trace


def test_stats_table(shared_data, capsys):
    assert main(["stats", str(shared_data / "pytorch-dataloader-starvation.db")]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[1]: line.split() for line in out.splitlines() if len(line.split()) > 2 and line.split()[0] in ("CUDA", "HOST", "DRIVER")}
    assert lines["sched_switch"][:4] == ["HOST", "sched_switch", "3,676", "25.7"]
    assert lines["cudaLaunchKernel"][2:] == ["16", "74.7", "µs", "6.54", "ms", "21.9", "ms", "25.4", "ms", "25.8", "ms", "27.0", "ms", "0"]


def test_stats_json_is_op_stats(shared_data, capsys):
    path = shared_data / "sample-cluster.db"
    assert main(["stats", str(path), "--json", "--source", "IO"]) == 0
    got = json.loads(capsys.readouterr().out)
    with open_trace(path) as db:
        expected = op_stats(db, source="IO")
    assert got == json.loads(json.dumps(expected))
    assert [(s["op"], s["count"]) for s in got] == [("block_write", 207), ("block_read", 98)]
    for key in ("source", "op", "count", "p50_ns", "p95_ns", "p99_ns", "p999_ns", "max_ns", "total_ns", "errors"):
        assert key in got[0]


def test_stats_pid_filter(shared_data, capsys):
    assert main(["stats", str(shared_data / "sample-cluster.db"), "--json", "--pid", "4599"]) == 0
    got = {(s["source"], s["op"]): s["count"] for s in json.loads(capsys.readouterr().out)}
    conn = sqlite3.connect(f"file:{shared_data / 'sample-cluster.db'}?mode=ro", uri=True)
    expected = {(s, o): n for s, o, n in conn.execute(
        "SELECT s.name, o.name, count(*) FROM events e JOIN sources s ON s.id = e.source "
        "JOIN ops o ON o.source_id = e.source AND o.op_id = e.op WHERE pid = 4599 GROUP BY 1, 2")}
    conn.close()
    assert got == expected and got


def test_stats_corrupt_db_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.db"
    bad.write_bytes(bytes(range(256)) * 40)
    assert main(["stats", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"whyprobe: Not a readable SQLite database: {bad} (file is not a database)\n"
    assert captured.out == ""


def test_stats_missing_db_is_one_line(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "nope.db")]) == 1
    assert capsys.readouterr().err == f"whyprobe: No such database: {tmp_path / 'nope.db'}\n"


def test_import_ingero_then_stats(shared_data, tmp_path, capsys):
    out = tmp_path / "t.db"
    src = shared_data / "pytorch-dataloader-starvation.db"
    assert main(["import-ingero", str(src), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"Wrote {out} (3,807 events, 1 session(s), 316 Ingero causal chains kept as ingero_causal_chains)\n"
    assert main(["import-ingero", str(src), "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"whyprobe: File exists, will not overwrite without --force: {out}\n"
    assert main(["import-ingero", str(src), "--out", str(out), "--force"]) == 0
    capsys.readouterr()
    assert main(["stats", str(out), "--json", "--source", "CUDA"]) == 0
    ops = {s["op"]: s["count"] for s in json.loads(capsys.readouterr().out)}
    assert ops == {"cudaMemcpyAsync": 14, "cudaDeviceSynchronize": 3, "cudaLaunchKernel": 16, "cudaMalloc": 7, "cudaStreamSynchronize": 21}


def test_merge_cli(shared_data, tmp_path, capsys):
    out = tmp_path / "fleet.db"
    args = ["merge", *(str(shared_data / f"sample-gpu-node-0{i}.db") for i in (1, 2, 3)), "--out", str(out)]
    assert main([*args, "--clock-skew", "gpu-node-03=-250"]) == 0
    stdout = capsys.readouterr().out
    assert stdout.splitlines()[-1] == f"Wrote {out} (600 events from 3 databases)"
    assert "node gpu-node-03 (sessions.node), 200 events, clock corrected by -250 ns" in stdout
    conn = sqlite3.connect(out)
    assert conn.execute("SELECT node, count(*) FROM events GROUP BY node").fetchall() == [("gpu-node-01", 200), ("gpu-node-02", 200), ("gpu-node-03", 200)]
    conn.close()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--clock-skew", "nonsense"], "whyprobe: --clock-skew wants NODE=NANOSECONDS (e.g. gpu-node-02=-1500000), got 'nonsense'\n"),
        (["--clock-skew", "gpu-node-01=abc"], "whyprobe: --clock-skew wants NODE=NANOSECONDS (e.g. gpu-node-02=-1500000), got 'gpu-node-01=abc'\n"),
    ],
)
def test_merge_bad_skew(shared_data, tmp_path, capsys, extra, message):
    code = main(["merge", str(shared_data / "sample-gpu-node-01.db"), "--out", str(tmp_path / "o.db"), *extra])
    assert code == 2
    assert capsys.readouterr().err == message
    assert not (tmp_path / "o.db").exists()


def test_merge_missing_input(shared_data, tmp_path, capsys):
    out = tmp_path / "o.db"
    assert main(["merge", str(shared_data / "sample-gpu-node-01.db"), str(tmp_path / "gone.db"), "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"whyprobe: No such database: {tmp_path / 'gone.db'}\n"
    assert list(tmp_path.iterdir()) == []
