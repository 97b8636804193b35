"""The shipped replays: real recordings of every demo scenario, small, restorable, and each one
explained the way its scenario says (and only its own scenario's way)."""

from __future__ import annotations

import gzip
import shutil
import sqlite3
from pathlib import Path

import pytest

from whyprobe.demo import scenarios
from whyprobe.errors import CommandError, WhyprobeError

NAMES = list(scenarios.SCENARIOS)


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("replays")
    return {name: scenarios.document(name, scenarios.run_replay(name, out / f"{name}.db")) for name in NAMES}


TRAIN = [n for n in NAMES if scenarios.get(n).kind == "explain"]


@pytest.mark.parametrize("name", TRAIN)
def test_each_replay_is_a_small_real_recording_of_its_scenario(name, tmp_path):
    # GIVEN the packaged file
    packed = scenarios.replay_path(name)
    assert packed.is_file() and packed.stat().st_size < 300_000
    # WHEN restored
    db = scenarios.run_replay(name, tmp_path / "r.db")
    # THEN it is a whyprobe trace of `whyprobe demo <name>` with nothing dropped, and its events indexes are back
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT argv, probes, ring_drops + queue_drops + rate_drops FROM sessions").fetchall() == [
        (f"whyprobe demo {name}", ",".join(scenarios.PROBES), 0)
    ]
    indexes = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'")}
    assert {"idx_events_timestamp", "idx_events_source_op", "idx_events_tid_ts", "idx_events_pid"} <= indexes
    # AND the CUDA calls were made by train_loop on the stand-in runtime
    comms = {c for (c,) in conn.execute("SELECT DISTINCT t.comm FROM events e JOIN thread_names t USING (tid) WHERE e.source = 1")}
    assert comms == {"train_loop"}
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_mcp_tool_replay_is_a_footprint_recording(tmp_path):
    packed = scenarios.replay_path("mcp-tool")
    assert packed.stat().st_size < 300_000
    db = scenarios.run_replay("mcp-tool", tmp_path / "m.db")
    conn = sqlite3.connect(db)
    # the footprint command recorded it: the client's command line, and every tools/call with its answer
    assert conn.execute("SELECT argv LIKE '%footprint --out%mcp_notes_client.py%' FROM sessions").fetchone() == (1,)
    assert conn.execute("SELECT tool_name FROM tool_calls ORDER BY started_at").fetchall() == [
        ("search_notes",), ("read_note",), ("search_notes",), ("read_note",)
    ]
    methods = [m for (m,) in conn.execute("SELECT method FROM mcp_messages WHERE direction = 'client->server' ORDER BY timestamp")]
    assert methods == ["initialize", "notifications/initialized", "tools/list", *["tools/call"] * 4]


def test_mcp_tool_footprints_show_grep_and_the_files(docs):
    tools = {t["tool_name"]: t for t in docs["mcp-tool"]["tools"]}
    search, read = tools["search_notes"], tools["read_note"]
    assert [c.split(" --")[0] for c in search["children"]] == ["grep -ril", "grep -ril"]
    assert {p.rsplit("/", 1)[1] for p in read["files"]} == {"gpu-latency.md", "gpu-kernels.md"}
    assert read["children"] == [] and search["calls"] == read["calls"] == 2


def test_verdicts_recognise_only_their_own_scenario(docs):
    # GIVEN the explain document of every replay, WHEN judged by every scenario's check
    accepted = {a: [b for b in NAMES if not scenarios.get(b).verdict(docs[a])] for a in NAMES}
    # THEN each replay passes its own check and no other
    assert accepted == {a: [a] for a in NAMES}


def test_cpu_contention_names_the_hog_on_the_training_cpu(docs):
    top = docs["cpu-contention"]["findings"][0]
    assert (top["kind"], top["op"], top["severity"], top["dominant_cause"]) == ("tail", "cudaLaunchKernel", "high", "off_cpu")
    hog = top["causes"][0]["blockers"][0]
    # this recording was made on a quiet host: the hog took the CPU for most of the lost time
    assert top["causes"][0]["kind"] == "off_cpu" and hog["comm"] == "cpu-hog" and hog["tid"] == hog["pid"] != top["pid"]
    assert hog["ns"] > 0.5 * top["causes"][0]["explained_ns"]
    assert any(f"renice +10 -p {hog['pid']}" in r for r in top["recommendations"])


def test_io_stall_gap_is_the_training_threads_own_block_io(docs):
    top = docs["io-stall"]["findings"][0]
    assert (top["kind"], top["dominant_cause"], top["comm"]) == ("gap", "io", "train_loop")
    io = top["causes"][0]
    assert io["kind"] == "io" and io["explained_ns"] > 0.5 * top["lost_ns"]
    assert io["blockers"][0]["tid"] == top["tid"]


def test_dataloader_gap_is_waiting_for_the_loader(docs):
    top = docs["dataloader-starvation"]["findings"][0]
    assert (top["kind"], top["dominant_cause"]) == ("gap", "off_cpu")
    waker = top["causes"][0]["blockers"][0]
    assert waker["comm"] == "loader-0" and waker["pid"] == top["pid"] and waker["tid"] != top["tid"]


def test_dataloader_fix_is_more_workers(docs):
    top = docs["dataloader-starvation"]["findings"][0]
    assert any("num_workers" in r for r in top["recommendations"])


def test_sync_wait_is_not_blamed_on_the_host(docs):
    doc = docs["sync-wait"]
    top = doc["findings"][0]
    assert (top["op"], top["dominant_cause"]) == ("cudaDeviceSynchronize", "sync_wait")
    assert top["causes"][0]["explained_ns"] >= 0.9 * top["lost_ns"]
    assert [f for f in doc["findings"] if f["severity"] == "high" and f["dominant_cause"] != "sync_wait"] == []


def test_clean_run_raises_no_high_severity_finding(docs):
    assert [f["severity"] for f in docs["clean"]["findings"] if f["severity"] == "high"] == []


def test_run_replay_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "x.db"
    out.write_text("precious")
    with pytest.raises(WhyprobeError) as err:
        scenarios.run_replay("clean", out)
    assert str(err.value) == f"File exists, will not overwrite without --force: {out}"
    assert out.read_text() == "precious"
    # WITH force the recording replaces it, and leaves no temporary file behind
    scenarios.run_replay("clean", out, force=True)
    assert out.read_bytes()[:16] == b"SQLite format 3\0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


def test_run_replay_of_unknown_scenario_lists_the_valid_ones(tmp_path):
    with pytest.raises(CommandError) as err:
        scenarios.run_replay("gpu-melts", tmp_path / "x.db")
    assert err.value.exit_code == 2
    assert str(err.value) == f"Unknown scenario 'gpu-melts': choose one of {', '.join(NAMES)}"
    assert not (tmp_path / "x.db").exists()


def test_run_replay_into_missing_directory_says_so(tmp_path):
    with pytest.raises(WhyprobeError) as err:
        scenarios.run_replay("clean", tmp_path / "no" / "x.db")
    assert str(err.value) == f"Cannot write database: {tmp_path / 'no' / 'x.db'} (no such directory: {tmp_path / 'no'})"


def test_origin_names_host_date_and_kernel(tmp_path):
    db = scenarios.run_replay("sync-wait", tmp_path / "s.db")
    host, kernel = sqlite3.connect(db).execute("SELECT hostname, kernel FROM sessions").fetchone()
    text = scenarios.origin(db)
    assert text.startswith(f"{host} on 20") and text.endswith(f" UTC (kernel {kernel})")


def test_replays_are_gzip_of_sqlite():
    for name in NAMES:
        with gzip.open(scenarios.replay_path(name)) as f:
            assert f.read(16) == b"SQLite format 3\0"


def test_mcp_run_demo_replays_through_run_replay(tmp_path):
    # GIVEN the MCP tool the server exposes, WHEN it replays the default scenario
    from whyprobe.server.security import SecuritySettings
    from whyprobe.server.tools import ServerState, run_demo_tool

    replayed = run_demo_tool(ServerState(tmp_path / "served.db", SecuritySettings()), name="dataloader-starvation")
    db = Path(replayed.data["database"])
    try:
        # THEN it names the restored database and its stats show the training loop's CUDA calls
        assert db.name == "dataloader-starvation.db" and db.is_file()
        assert {"cudaLaunchKernel", "cudaDeviceSynchronize"} <= {row["op"] for row in replayed.data["stats"]["ops"]}
    finally:
        shutil.rmtree(db.parent)
