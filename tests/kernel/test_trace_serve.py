"""`trace --serve`: the trace being recorded is answerable over MCP while it records."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from cuda_helpers import REAL_CUDART

from whyprobe.commands import main
from testkit import free_port

from whyprobe.demo.build import build_workloads

pytestmark = pytest.mark.usefixtures("bpf_required")

async def _count(url: str) -> int:
    async with httpx.AsyncClient() as http:
        async with Client(streamable_http_client(url, http_client=http)) as client:
            res = await client.call_tool("run_sql", {"sql": "SELECT COUNT(*) FROM events WHERE source = 1 AND op = 2"})
            return int(res.structured_content["rows"][0][0])


def test_a_live_trace_answers_sql_over_mcp(tmp_path: Path) -> None:
    # GIVEN a 4 s workload making 100 cudaFree calls per second, traced with --serve
    w = build_workloads()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "whyprobe", "trace", "--quiet", "--probes", "cuda", "--lib", str(REAL_CUDART), "--out", str(tmp_path / "t.db"),
         "--serve", f"127.0.0.1:{port}", "--cmd", "--", str(w.driver), "-r", "100", str(REAL_CUDART), "cudaFree=400"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # WHEN an MCP client asks while the trace runs
    seen = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None and seen < 50:
        try:
            seen = asyncio.run(_count(f"http://127.0.0.1:{port}/mcp"))
        except Exception:  # server still starting
            time.sleep(0.3)
    out, err = proc.communicate(timeout=60)
    # THEN it saw calls mid-trace, and the finished trace holds all of them
    assert proc.returncode == 0, err
    assert 50 <= seen < 400
    import sqlite3

    assert sqlite3.connect(tmp_path / "t.db").execute("SELECT COUNT(*) FROM events WHERE source = 1 AND op = 2").fetchone()[0] == 400


def test_serve_off_loopback_without_a_token_is_refused_before_work(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("WHYPROBE_MCP_TOKEN", raising=False)
    rc = main(["trace", "--serve", "0.0.0.0:8799", "--out", str(tmp_path / "t.db"), "--cmd", "--", "true"])
    assert rc != 0
    assert capsys.readouterr().err.startswith("whyprobe: refusing to bind 0.0.0.0 without a bearer token")
    assert not (tmp_path / "t.db").exists()
