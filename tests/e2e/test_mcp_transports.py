"""`whyprobe mcp` as a real process: SDK client over stdio, streamable HTTP (bearer token, TLS),
the fleet fan-out, start-up refusal, rate limiting, and the inspector CLI when npx has it."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from testkit import free_port

from whyprobe.commands import main

ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
TOKEN = "t0ken-for-tests"


def start(args: list[str], port: int, env: dict, tls: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen([PY, "-m", "whyprobe", "mcp", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode())
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def data() -> Path:
    return ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def token_server(data: Path, tmp_path_factory: pytest.TempPathFactory):
    """Bound to 0.0.0.0 (off loopback) with a bearer token; reached via 127.0.0.1."""
    port = free_port()
    audit = tmp_path_factory.mktemp("audit") / "a.sqlite"
    env = {**os.environ, "WHYPROBE_MCP_TOKEN": TOKEN}
    proc = start(["--db", str(data / "sample-cluster.db"), "--http", "--bind", f"0.0.0.0:{port}", "--audit", str(audit)], port, env)
    yield port, audit
    stop(proc)


@pytest.fixture(scope="module")
def tls_server(data: Path, tls_cert: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    cert, key = tls_cert
    port = free_port()
    proc = start(
        ["--db", str(data / "pytorch-dataloader-starvation.db"), "--http", "--bind", f"127.0.0.1:{port}",
         "--audit", str(tmp_path_factory.mktemp("tls-audit") / "a.sqlite"), "--tls-cert", str(cert), "--tls-key", str(key)],
        port, {k: v for k, v in os.environ.items() if k != "WHYPROBE_MCP_TOKEN"},
    )
    yield port, cert
    stop(proc)


def http_client(url: str, token: str | None = TOKEN, verify: object = True) -> tuple[Client, httpx2.AsyncClient]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"} if token else {}, verify=verify)
    return Client(streamable_http_client(url, http_client=http)), http


def direct_count(db: Path, sql: str) -> int:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True).execute(sql).fetchone()[0]


def test_stdio_lists_and_calls_every_tool(data: Path, tmp_path: Path) -> None:
    db = data / "pytorch-dataloader-starvation.db"
    params = StdioServerParameters(command=PY, args=["-m", "whyprobe", "mcp", "--db", str(db), "--audit", str(tmp_path / "a.sqlite")])

    async def go():
        async with Client(params) as c:
            names = [t.name for t in (await c.list_tools()).tools]
            results = {n: await c.call_tool(n, {}) for n in names}
            count = await c.call_tool("run_sql", {"sql": "SELECT COUNT(*) FROM events"})
            return names, results, count

    names, results, count = anyio.run(go)
    assert len(names) == 15
    assert count.structured_content["rows"] == [[direct_count(db, "SELECT COUNT(*) FROM events")]]
    assert results["get_stacks"].structured_content["stacks"][0]["count"] == 24
    assert results["query_off_cpu_events"].structured_content["total"] == direct_count(db, "SELECT COUNT(*) FROM events WHERE source = 3 AND op = 1")
    assert results["analyze_gpu_launch_latency"].structured_content["count"] == 16
    # tools with no data or no engine say so as tool errors, never crash the server
    assert results["query_fleet"].is_error and "no fleet nodes" in results["query_fleet"].content[0].text
    if results["get_trace_stats"].is_error is False:
        out = subprocess.run([PY, "-m", "whyprobe", "stats", str(db), "--json"], capture_output=True, text=True, check=True).stdout
        want = {(r["op"], r["p99_ns"]) for r in json.loads(out)}
        got = {(r["op"], r["p99_ns"]) for r in results["get_trace_stats"].structured_content["ops"]}
        assert got <= want and len(got) == min(len(want), 20)


def test_a_client_that_leaves_during_the_warm_up_gets_a_clean_exit(tmp_path: Path) -> None:
    # GIVEN a fresh demo trace, whose tool caches the server warms up in a thread after it starts
    db = tmp_path / "t.db"
    assert main(["demo", "mcp-tool", "--replay", "--out", str(db)]) == 0
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    exits = []
    # WHEN a client lists the tools and leaves at once, 20 times (numpy still running in the warm-up
    # while the interpreter finalized crashed 1 exit in 5 with SIGSEGV)
    for _ in range(20):
        proc = subprocess.Popen([PY, "-m", "whyprobe", "mcp", "--db", str(db), "--audit", str(tmp_path / "a.sqlite")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdin.write("".join(json.dumps(m) + "\n" for m in messages))
        proc.stdin.flush()
        while '"id":2' not in proc.stdout.readline().replace(" ", ""):
            pass
        proc.stdin.close()
        err = proc.stderr.read()
        exits.append((proc.wait(60), "Fatal Python error" in err))
    # THEN the server ends cleanly every time
    assert exits == [(0, False)] * 20


def test_http_requires_token_off_loopback(token_server) -> None:
    port, _ = token_server
    url = f"http://127.0.0.1:{port}/mcp"
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = httpx.post(url, json=body, headers=headers)
        assert r.status_code == 401 and r.content == b""


def test_http_with_token_calls_tools(token_server, data: Path) -> None:
    port, audit = token_server

    async def go():
        client, http = http_client(f"http://127.0.0.1:{port}/mcp")
        async with http, client as c:
            n = await c.call_tool("run_sql", {"sql": "SELECT COUNT(*) FROM events"})
            tl = await c.call_tool("get_timeline", {})
            return n, tl

    n, tl = anyio.run(go)
    assert n.structured_content["rows"] == [[direct_count(data / "sample-cluster.db", "SELECT COUNT(*) FROM events")]]
    assert tl.structured_content["events"]
    assert sqlite3.connect(audit).execute("SELECT COUNT(*) FROM audit_log WHERE client LIKE 'http:127.0.0.1%'").fetchone()[0] >= 2


def test_https_with_self_signed_cert(tls_server, data: Path) -> None:
    port, cert = tls_server

    async def go():
        import ssl

        client, http = http_client(f"https://127.0.0.1:{port}/mcp", token=None, verify=ssl.create_default_context(cafile=str(cert)))
        async with http, client as c:
            return await c.call_tool("run_sql", {"sql": "SELECT COUNT(*) FROM events"})

    assert anyio.run(go).structured_content["rows"] == [[direct_count(data / "pytorch-dataloader-starvation.db", "SELECT COUNT(*) FROM events")]]


def test_refuses_non_loopback_without_token(data: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WHYPROBE_MCP_TOKEN"}
    r = subprocess.run([PY, "-m", "whyprobe", "mcp", "--db", str(data / "sample-cluster.db"), "--http", "--bind", f"0.0.0.0:{free_port()}"],
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "refusing to bind 0.0.0.0 without a bearer token" in r.stderr


def test_rate_limit_over_http_then_healthy(token_server) -> None:
    port, _ = token_server

    async def go():
        client, http = http_client(f"http://127.0.0.1:{port}/mcp")
        codes: list[int] = []
        async with http, client as c:
            async def one():
                try:
                    await c.call_tool("run_sql", {"sql": "SELECT 1"})
                    codes.append(0)
                except MCPError as exc:
                    codes.append(exc.code)

            async with anyio.create_task_group() as tg:
                for _ in range(1000):
                    tg.start_soon(one)
            await anyio.sleep(1.1)
            after = await c.call_tool("run_sql", {"sql": "SELECT 2"})
        return codes, after

    codes, after = anyio.run(go)
    # the client may also list tools for schema checks, which count against the same budget
    assert len(codes) == 1000 and codes.count(-32029) >= 800 and codes.count(0) >= 1
    assert set(codes) <= {0, -32029}
    assert after.structured_content["rows"] == [[2]]


def test_fleet_query_merges_and_names_failed_node(token_server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    port, _ = token_server
    monkeypatch.setenv("WHYPROBE_MCP_TOKEN", TOKEN)
    dead = f"127.0.0.1:{free_port()}"
    assert main(["query", "--nodes", f"127.0.0.1:{port},{dead}", "SELECT COUNT(*) AS n FROM events", "--json", "--timeout", "5"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == [{"node": f"127.0.0.1:{port}", "n": 600}]
    assert f"node {dead} failed: unreachable" in out.err
    assert main(["query", "--nodes", dead, "SELECT 1", "--timeout", "5"]) != 0
    assert "all 1 node(s) failed" in capsys.readouterr().err


def test_inspector_cli_over_stdio(data: Path, tmp_path: Path) -> None:
    # The inspector is pinned in tests/node (installed by `make test`); --no-install: never download here.
    node = Path(__file__).resolve().parents[1] / "node"
    if not (node / "node_modules/@modelcontextprotocol/inspector").is_dir():
        pytest.fail("tests/node/node_modules lacks @modelcontextprotocol/inspector: run `make test` (npm ci --prefix tests/node)")
    cmd = ["npx", "--no-install", "@modelcontextprotocol/inspector", "--cli", PY, "-m", "whyprobe", "mcp",
           "--db", str(data / "sample-cluster.db"), "--audit", str(tmp_path / "a.sqlite"),
           "--method", "tools/call", "--tool-name", "run_sql", "--tool-arg", "sql=SELECT COUNT(*) AS n FROM events"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=node)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["structuredContent"]["rows"] == [[600]]


def test_get_check_reports_the_same_readiness_as_the_cli() -> None:
    # The MCP view of `check` is the CLI's report: kernel capabilities, CUDA libraries, GPU.
    from whyprobe.readiness import readiness_report
    from whyprobe.server.tools import get_check_tool

    result = get_check_tool(None)
    assert result.data == readiness_report()
    assert f"can_trace={readiness_report()['can_trace']}" in result.summary
