"""The seed's published configuration, verbatim (../shared/data/seed-config.yaml): `trace --config` records
what every key says on the real libcudart and a real disk, and `mcp --config` serves it as the file says."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import yaml
from mcp import Client, StdioServerParameters

from cuda_helpers import REAL_CUDART

from whyprobe.demo.build import build_workloads
from whyprobe.events import Source

pytestmark = pytest.mark.usefixtures("bpf_required")

SEED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "seed-config.yaml"
LAUNCHES, SYNCS = 300, 20


@pytest.fixture(scope="module")
def seed_trace(tmp_path_factory) -> Path:
    # GIVEN the seed file as typed: libcudart.so is found by name, here on LD_LIBRARY_PATH (the wheel's lib dir)
    tmp = tmp_path_factory.mktemp("seed")
    w = build_workloads()
    env = {**os.environ, "LD_LIBRARY_PATH": str(REAL_CUDART.parent)}
    scratch = f"/var/tmp/whyprobe-seed-{os.getpid()}.bin"  # ext4 on a block device, not tmpfs
    # WHEN a shell runs the driver (300 launches, 20 syncs on the real libcudart), then writes 1 MiB with O_DIRECT
    script = (f"{w.driver} -c 0 {REAL_CUDART} cudaLaunchKernel={LAUNCHES} cudaDeviceSynchronize={SYNCS} && "
              f"dd if=/dev/zero of={scratch} bs=64k count=16 oflag=direct conv=fsync status=none; rm -f {scratch}")
    db = tmp / "t.db"
    proc = subprocess.run([sys.executable, "-m", "whyprobe", "trace", "--quiet", "--config", str(SEED), "--out", str(db), "--cmd", "--", "sh", "-c", script],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # AND the uprobes went on the library the command really loads (LD_LIBRARY_PATH first, as its linker would)
    flags = json.loads(sqlite3.connect(db).execute("SELECT flags FROM sessions").fetchone()[0])
    assert {u["path"] for u in flags["custom_uprobes"]} == {str(REAL_CUDART.resolve())}
    return db


def test_uprobes_attach_at_entry_only_as_written(seed_trace) -> None:
    db = seed_trace
    con = sqlite3.connect(db)
    rows = dict(con.execute("SELECT op, COUNT(*) FROM events WHERE source = ? AND op < 1000 GROUP BY op", (int(Source.CUSTOM),)).fetchall())
    # THEN entry probes: one event per call, no duration, no return value
    assert rows == {0: LAUNCHES, 1: SYNCS}
    assert con.execute("SELECT COUNT(*) FROM events WHERE source = ? AND op < 1000 AND (duration != 0 OR ret_code != 0)",
                       (int(Source.CUSTOM),)).fetchone()[0] == 0
    names = dict(con.execute("SELECT op_id, name FROM ops WHERE source_id = ?", (int(Source.CUSTOM),)).fetchall())
    assert names[0] == "libcudart.so:cudaLaunchKernel" and names[1] == "libcudart.so:cudaDeviceSynchronize"


def test_tracepoint_filters_hold_for_every_recorded_event(seed_trace) -> None:
    db = seed_trace
    con = sqlite3.connect(db)
    # sched_switch records prev_pid as arg0: `prev_pid != 0 && next_pid != 0` left no idle switch
    switches = con.execute("SELECT COUNT(*), SUM(arg0 = 0) FROM events WHERE source = ? AND op = 1000", (int(Source.CUSTOM),)).fetchone()
    assert switches[0] > 0 and switches[1] == 0
    # block_rq_issue with `rwbs ~ '.*W.*'`: dd's direct writes are there; the host family's own block
    # probe saw every request, and the filtered copy is the write subset of it
    writes = con.execute("SELECT COUNT(*) FROM events WHERE source = ? AND op = 1001", (int(Source.CUSTOM),)).fetchone()[0]
    assert writes >= 16


def test_storage_keys_are_honoured(seed_trace) -> None:
    db = seed_trace
    con = sqlite3.connect(db)
    # precision_ms: 1 -> every stored timestamp is a whole millisecond; durations stay in ns
    assert con.execute("SELECT COUNT(*) FROM events WHERE timestamp % 1000000 != 0").fetchone()[0] == 0
    assert con.execute("SELECT COUNT(*) FROM events WHERE duration % 1000000 != 0").fetchone()[0] > 0
    # retention_hours: 72 pruned nothing from a fresh trace; max_events_per_second: 50000 dropped nothing here
    assert con.execute("SELECT pruned, rate_drops FROM sessions").fetchone() == (0, 0)
    # backend: columnar -> the DuckDB copy holds the same events
    import duckdb

    total = con.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    with duckdb.connect(str(db.with_suffix(".duckdb")), read_only=True) as duck:
        assert duck.execute("SELECT COUNT(*) FROM events").fetchone()[0] == total


def test_mcp_serves_the_seed_server_and_tools(seed_trace, tmp_path: Path) -> None:
    db = seed_trace
    seed = yaml.safe_load(SEED.read_text())
    params = StdioServerParameters(command=sys.executable, args=["-m", "whyprobe", "mcp", "--db", str(db), "--config", str(SEED),
                                                                  "--audit", str(tmp_path / "a.sqlite")], env=dict(os.environ))

    async def go():
        async with Client(params) as c:
            tools = (await c.list_tools()).tools
            off = await c.call_tool("query_off_cpu_events", {"limit": 5})
            return c.server_info, tools, off

    info, tools, off = anyio.run(go)
    # THEN initialize reports the seed's name and version, over the seed's default transport (stdio)
    assert (info.name, info.version) == ("kernel-diagnostic-bridge", "1.0.0")
    # AND exactly the listed tools, with the listed descriptions and an event-shaped output schema
    assert [(t.name, t.description) for t in tools] == [(t["name"], t["description"]) for t in seed["tools"]]
    for t in tools:
        assert t.output_schema["required"] == ["events"] and t.annotations.read_only_hint
    # AND pid_filtering: true shows only the traced processes: the shell, the driver, dd
    events = off.structured_content["events"]
    assert events and all({"id", "timestamp_ns", "duration_ns", "pid", "tid", "op"} <= set(e) for e in events)
    con = sqlite3.connect(db)
    traced = {int(p) for p in con.execute("SELECT pid_filter FROM sessions").fetchone()[0].split(",")}
    children = {p for (p,) in con.execute("SELECT pid FROM process_names WHERE ppid IN (%s)" % ",".join(map(str, traced)))}
    assert {e["pid"] for e in events} <= traced | children


def test_attach_modes_on_the_real_libcudart(tmp_path: Path) -> None:
    # GIVEN the real libcudart probed three ways: cudaLaunchKernel at entry, cudaDeviceSynchronize at return,
    # cudaMalloc both; and the cuda family on the same library, for the return codes it reads
    cfg = tmp_path / "w.yaml"
    cfg.write_text(
        "probes:\n  families: [cuda]\n  uprobes:\n"
        f'    - {{library: "{REAL_CUDART}", symbol: cudaLaunchKernel, attach: entry}}\n'
        f'    - {{library: "{REAL_CUDART}", symbol: cudaDeviceSynchronize, attach: return}}\n'
        f'    - {{library: "{REAL_CUDART}", symbol: cudaMalloc, attach: both}}\n'
    )
    w = build_workloads()
    db = tmp_path / "t.db"
    # WHEN the driver makes 250 launches, 40 syncs and 70 mallocs
    proc = subprocess.run([sys.executable, "-m", "whyprobe", "trace", "--quiet", "--config", str(cfg), "--lib", str(REAL_CUDART), "--out", str(db),
                           "--cmd", "--", str(w.driver), "-c", "0", str(REAL_CUDART), "cudaLaunchKernel=250", "cudaDeviceSynchronize=40", "cudaMalloc=70"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    con = sqlite3.connect(db)
    custom = {op: con.execute("SELECT COUNT(*), SUM(duration > 0), COUNT(DISTINCT ret_code), MIN(ret_code) FROM events WHERE source = ? AND op = ?",
                              (int(Source.CUSTOM), op)).fetchone() for op in (0, 1, 2)}
    cuda_ret = dict(con.execute("SELECT o.name, MIN(e.ret_code) FROM events e JOIN ops o ON o.source_id = e.source AND o.op_id = e.op "
                                "WHERE e.source = ? GROUP BY o.name", (int(Source.CUDA),)).fetchall())
    # THEN entry: one record per launch, no duration, no return value
    assert custom[0] == (250, 0, 1, 0)
    # AND return: one record per sync with the return value the runtime gave (the cuda family read the same)
    assert custom[1][:3] == (40, 0, 1) and custom[1][3] == cuda_ret["cudaDeviceSynchronize"]
    # AND both: one record per malloc with its duration and return value
    assert custom[2][:3] == (70, 70, 1) and custom[2][3] == cuda_ret["cudaMalloc"]
