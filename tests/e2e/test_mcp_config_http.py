"""`whyprobe mcp --config` as a real HTTP server, reached with the SDK client: the config's transport, identity,
tool set and output cap; refused (401) requests in the audit log."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

import anyio
import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_mcp_transports import TOKEN, free_port, http_client, start, stop  # noqa: E402

from whyprobe.commands import main

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CAP = 4096


@pytest.fixture(scope="module")
def config_server(tmp_path_factory: pytest.TempPathFactory):
    # GIVEN a config whose default transport is http, with its own identity, three tools and a 4 KiB output cap;
    # started WITHOUT --http or --bind: both come from the file
    tmp = tmp_path_factory.mktemp("cfg")
    port = free_port()
    cfg = tmp / "whyprobe.yaml"
    cfg.write_text(
        'server:\n  name: "gpu-bridge"\n  version: "2.5.0"\n  transport: "http"\n'
        "tools:\n  - name: run_sql\n  - name: get_timeline\n    description: \"Events around a moment\"\n    schema: \"event\"\n"
        "  - name: query_off_cpu_events\n    schema: event\n"
        f"security:\n  bind: \"127.0.0.1:{port}\"\n  max_output_bytes: {CAP}\n  rate_limit_per_second: 1000\n"
    )
    audit = tmp / "audit.sqlite"
    env = {**os.environ, "WHYPROBE_MCP_TOKEN": TOKEN}
    proc = start(["--db", str(DATA / "pytorch-dataloader-starvation.db"), "--config", str(cfg), "--audit", str(audit)], port, env)
    yield port, audit
    stop(proc)


def _session(port: int, token: str = TOKEN, **calls: dict):
    async def go():
        client, http = http_client(f"http://127.0.0.1:{port}/mcp", token=token)
        async with http, client as c:
            tools = (await c.list_tools()).tools
            results = {name: await c.call_tool(name.split("#")[0], args) for name, args in calls.items()}
            return c.server_info, tools, results

    return anyio.run(go)


def test_config_sets_transport_identity_and_tools(config_server) -> None:
    port, _ = config_server
    info, tools, _ = _session(port)
    # THEN initialize reports the configured name and version
    assert (info.name, info.version) == ("gpu-bridge", "2.5.0")
    # AND exactly the configured tools: a configured description replaces the built-in one, none keeps it
    by_name = {t.name: t for t in tools}
    assert sorted(by_name) == ["get_timeline", "query_off_cpu_events", "run_sql"]
    assert by_name["get_timeline"].description == "Events around a moment"
    assert by_name["run_sql"].description.startswith("Run one read-only SQL query")
    # AND schema: "event" declares event-shaped output; the others keep the free-form object
    assert by_name["query_off_cpu_events"].output_schema["required"] == ["events"]
    assert "events" not in (by_name["run_sql"].output_schema or {}).get("required", [])


def test_hidden_tool_cannot_be_called(config_server) -> None:
    port, _ = config_server
    _, _, results = _session(port, get_check={})
    assert results["get_check"].is_error and "get_check" in results["get_check"].content[0].text


def _compact(data: dict) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def test_output_cap_applies_to_structured_content(config_server) -> None:
    port, _ = config_server
    # WHEN tools answer with far more than 4 KiB: 500 off-CPU intervals, 500 timeline events, 2000 SQL rows
    _, _, results = _session(port, query_off_cpu_events={"limit": 500}, get_timeline={"limit": 500, "window_ms": 600_000},
                             run_sql={"sql": "SELECT * FROM events", "max_rows": 2000})
    for name in ("query_off_cpu_events", "get_timeline"):
        res = results[name]
        # THEN the structured content itself fits the cap and says what was cut
        assert len(_compact(res.structured_content)) <= CAP, name
        cut = res.structured_content["output_truncated"]
        assert cut["cap_bytes"] == CAP and cut["items_omitted"] > 0, name
        assert 0 < len(res.structured_content["events"]) < 500, name
        # AND the fenced text block carries the same JSON, still valid
        fenced = res.content[1].text
        assert json.loads(fenced.split("\n", 1)[1].rsplit("\n", 1)[0]) == res.structured_content, name
    assert len(_compact(results["run_sql"].structured_content)) <= CAP


def test_refused_requests_are_audited(config_server) -> None:
    port, audit = config_server
    url = f"http://127.0.0.1:{port}/mcp"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    # WHEN one request has no token, one a wrong token, and an SDK client a wrong token
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    with pytest.raises(BaseException):
        _session(port, token="also-wrong")
    # AND one good call
    _session(port, run_sql={"sql": "SELECT 1"})
    rows = sqlite3.connect(audit).execute("SELECT client, tool, allowed, reason FROM audit_log ORDER BY id").fetchall()
    refused = [r for r in rows if r[3].startswith("401")]
    # THEN every refusal is a row: who, on what, why; allowed = 0
    assert ("http:127.0.0.1", "http:POST /mcp", 0, "401 missing bearer token") in refused
    assert refused.count(("http:127.0.0.1", "http:POST /mcp", 0, "401 wrong bearer token")) >= 2
    assert any(r[1] == "tools/call:run_sql" and r[2] == 1 for r in rows)


def test_write_access_is_refused_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "w.yaml"
    cfg.write_text("security:\n  write_access: true\n")
    assert main(["mcp", "--db", str(DATA / "pytorch-dataloader-starvation.db"), "--config", str(cfg)]) == 1
    assert capsys.readouterr().err == (
        f"whyprobe: config error in {cfg}: security.write_access: whyprobe never writes to what it traces; expected false, got true\n"
    )


def test_unknown_tool_in_the_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tmp_path / "w.yaml"
    cfg.write_text("tools:\n  - name: query_off_cpu_event\n")
    assert main(["config", "--check", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("whyprobe: tools[0].name: unknown tool 'query_off_cpu_event' (expected one of: analyze_gpu_launch_latency, ")
    assert err.count("\n") == 1


def test_seed_config_checks_clean(capsys: pytest.CaptureFixture) -> None:
    seed = DATA / "seed-config.yaml"
    assert main(["config", "--check", str(seed)]) == 0
    assert capsys.readouterr().out == f"{seed}: OK\n"

