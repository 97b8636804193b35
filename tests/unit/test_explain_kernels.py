"""Findings and the launch-latency tool name kernels from `kernel_names`; unresolved handles stay hex."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from explain_synth import ENGINE_PID, MS, launch_loop, write_db  # noqa: E402
from test_mcp_tools import call  # noqa: E402

from whyprobe.analyze.explain import explain
from whyprobe.analyze.stats import op_stats
from whyprobe.commands import main
from whyprobe.export.timeline import build_timeline
from whyprobe.store.reader import open_trace

SGEMM = "_Z22ampere_sgemm_128x64_tnPfi"  # stored as the trace found it; shown demangled


def _db(tmp_path: Path, slow: dict[int, int], named: dict[int, str]) -> Path:
    events, _ = launch_loop(200, slow=slow)  # handles 0x7F00 + i % 4
    db = write_db(tmp_path / "t.db", events)
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany("INSERT INTO kernel_names(pid, handle, name, via) VALUES (?, ?, ?, 'test')", [(ENGINE_PID, h, n) for h, n in named.items()])
    conn.close()
    return db


def _launch_finding(db: Path) -> dict:
    with open_trace(db) as t:
        doc = explain(t)
    return next(f for f in doc["findings"] if f["op"] == "cudaLaunchKernel")


def test_cold_first_launch_names_its_kernel(tmp_path: Path) -> None:
    # GIVEN the very first launch (handle 0x7F00, the first call of the process) takes 30 ms
    db = _db(tmp_path, {0: 30 * MS}, {0x7F00: SGEMM, 0x7F01: "triton_poi_fused_0"})
    f = _launch_finding(db)
    # THEN the finding names the demangled kernel, in the key and the text
    assert f["kernel"] == "ampere_sgemm_128x64_tn(float*, int)"
    assert f["kernels"] == [{"kernel": "ampere_sgemm_128x64_tn(float*, int)", "slow_calls": 1}]
    assert f["causes"][0]["kind"] == "cold_start"
    assert "first launch of `ampere_sgemm_128x64_tn(float*, int)`" in f["summary"]
    assert any("first launch of `ampere_sgemm_128x64_tn(float*, int)`" in r.lower() for r in f["recommendations"])


def test_slow_launches_of_several_kernels_list_them_and_keep_hex(tmp_path: Path) -> None:
    # GIVEN slow launches of a named kernel (3x) and of an unnamed handle (2x)
    db = _db(tmp_path, {40: 9 * MS, 44: 9 * MS, 48: 9 * MS, 41: 9 * MS, 45: 9 * MS}, {0x7F00: SGEMM})
    f = _launch_finding(db)
    assert "kernel" not in f
    assert f["kernels"] == [{"kernel": "ampere_sgemm_128x64_tn(float*, int)", "slow_calls": 3}, {"kernel": "0x7f01", "slow_calls": 2}]
    # AND stats --by kernel has one row per kernel with exact counts (50 launches of each handle)
    with open_trace(db) as t:
        rows = {r["kernel"]: r["count"] for r in op_stats(t, by_kernel=True)}
    assert rows == {"ampere_sgemm_128x64_tn(float*, int)": 50, "0x7f01": 50, "0x7f02": 50, "0x7f03": 50}
    # AND the MCP launch-latency tool splits by kernel the same way
    res = call(db, "analyze_gpu_launch_latency", {})
    kernels = {k["kernel"]: k["count"] for k in res.structured_content["kernels"]}
    assert kernels == rows and res.structured_content["kernels_omitted"] == 0


def test_ingero_capture_keeps_hex(shared_data: Path) -> None:
    # GIVEN a real Ingero capture (no kernel_names table): every launch handle is shown as hex
    with open_trace(shared_data / "pytorch-dataloader-starvation.db") as t:
        rows = op_stats(t, by_kernel=True)
        total = t.conn.execute("SELECT COUNT(*) FROM events WHERE source = 1 AND op = 3").fetchone()[0]
    assert rows and all(r["kernel"].startswith("0x") for r in rows)
    assert sum(r["count"] for r in rows if r["op"] == "cudaLaunchKernel") == total


def test_stats_by_kernel_cli_json_and_bad_grouping(tmp_path: Path, capsys) -> None:
    db = _db(tmp_path, {}, {0x7F02: SGEMM})
    assert main(["stats", str(db), "--by", "kernel", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((r["op"], r["kernel"], r["count"]) for r in rows) == [
        ("cudaLaunchKernel", "0x7f00", 50), ("cudaLaunchKernel", "0x7f01", 50), ("cudaLaunchKernel", "0x7f03", 50),
        ("cudaLaunchKernel", "ampere_sgemm_128x64_tn(float*, int)", 50),
    ]
    # A grouping stats does not know is one line, no traceback.
    assert main(["stats", str(db), "--by", "thread"]) != 0
    err = capsys.readouterr().err
    assert err == "whyprobe: --by takes 'kernel', not 'thread'\n"


def test_timeline_launch_slices_carry_the_kernel(tmp_path: Path) -> None:
    db = _db(tmp_path, {}, {0x7F00: SGEMM})
    with open_trace(db) as t:
        slices = [s for s in build_timeline(t).slices if s.name == "cudaLaunchKernel"]
    kernels = {}
    for s in slices:
        kernels[s.args["kernel"]] = kernels.get(s.args["kernel"], 0) + 1
    assert kernels == {"ampere_sgemm_128x64_tn(float*, int)": 50, "0x7f01": 50, "0x7f02": 50, "0x7f03": 50}
