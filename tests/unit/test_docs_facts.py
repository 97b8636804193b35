"""Claims README.md and docs/ make about the tool, checked against the tool itself."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import anyio
import pytest
from markdown_it import MarkdownIt
from mcp import Client

from whyprobe.commands import main

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
CONTRACTS = (ROOT / "docs" / "contracts.md").read_text()


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _links(text: str) -> list[str]:
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    return [c.attrs["href"] for t in tokens for c in (t.children or ()) if c.type == "link_open"]


@pytest.mark.parametrize("doc", ["README.md", "docs/contracts.md"])
def test_links_stay_inside_the_repository(doc: str) -> None:
    for href in _links((ROOT / doc).read_text()):
        if re.match(r"^[a-z]+://", href):
            continue
        target = (ROOT / doc).parent / href.split("#", 1)[0]
        assert target.resolve().is_relative_to(ROOT) and target.exists(), f"{doc} links to {href}"


@pytest.fixture(scope="module")
def replay(tmp_path_factory) -> Path:
    from whyprobe.demo import scenarios

    return scenarios.run_replay("cpu-contention", tmp_path_factory.mktemp("facts") / "t.db")


def test_mcp_tool_table_lists_exactly_the_served_tools(replay: Path) -> None:
    from whyprobe.server.app import build_server
    from whyprobe.server.tools import ServerState

    async def tools():
        async with Client(build_server(ServerState(replay))) as c:
            return {t.name: t for t in (await c.list_tools()).tools}

    served = anyio.run(tools)
    table = _section(README, "MCP server")
    documented = {name for row in table.splitlines() if row.startswith("| `") for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert documented == set(served)
    # "200 rows unless max_rows asks for more": the schema's default
    assert served["run_sql"].input_schema["properties"]["max_rows"]["default"] == 200
    assert "200 rows unless `max_rows` asks for more" in table
    # the two tools the README says need an argument fail without one, naming it
    for name, needed in (("query_fleet", "nodes"), ("get_test_report", "JUnit")):
        assert f"`{name}` needs" in table or f"`{name}`" in table

        async def bare(name=name):
            async with Client(build_server(ServerState(replay))) as c:
                return await c.call_tool(name, {})

        result = anyio.run(bare)
        assert result.is_error and needed in result.content[0].text


def test_process_and_thread_columns_are_the_schemas(replay: Path) -> None:
    conn = sqlite3.connect(replay)
    row = next(r for r in _section(README, "Storage (SQLite schema)").splitlines() if r.startswith("| `process_names`"))
    cell = row.split("|")[2]
    for table in ("process_names", "thread_names"):
        columns = [c[1] for c in conn.execute(f"PRAGMA table_info({table})")]
        for column in columns:
            assert re.search(rf"\b{column}\b", cell), f"README's {table} row does not name {column}"
    assert "`comm`" not in cell.split(";")[0] and "name" in cell


def test_one_default_ring_size_everywhere(capsys) -> None:
    from whyprobe.commands.trace import DEFAULT_RING

    assert main(["config", "--example"]) == 0
    example = capsys.readouterr().out
    size = re.search(r'ring_size: "?(\d+)MiB"?', example)
    assert size and int(size.group(1)) << 20 == DEFAULT_RING
    assert main(["trace", "--help"]) == 0
    assert f"(default {size.group(1)}MiB" in " ".join(capsys.readouterr().out.split())


def test_readme_names_every_demo_scenario() -> None:
    from whyprobe.demo import scenarios

    row = next(r for r in README.splitlines() if r.startswith("| `demo [SCENARIO]`"))
    assert set(re.findall(r"`([a-z-]+)`", row.split("|")[1])) - {"list", "out", "replay"} >= set(scenarios.SCENARIOS)


def _documented_keys(block: str) -> tuple[set[str], set[str], set[str]]:
    doc = json.loads(block)
    finding = doc["findings"][0]
    return set(doc), set(finding), set(finding["causes"][0])


def test_explain_json_has_every_documented_key(replay: Path, capsys) -> None:
    block = re.search(r"## `explain --json`.*?```json\n(.*?)```", CONTRACTS, re.S).group(1)
    optional = set(re.findall(r"\| `findings\[\]\.(?:causes\[\]\.)?(\w+)(?:\[\])?` \| \*optional\*", CONTRACTS))
    top, finding, cause = _documented_keys(block)
    assert main(["explain", str(replay), "--json", "--no-store"]) == 0
    real = json.loads(capsys.readouterr().out)
    assert top <= set(real)
    for f in real["findings"]:
        assert finding - optional <= set(f), f["id"]
        for c in f["causes"]:
            assert cause - optional <= set(c)
    assert {"kernel", "minor", "frames"} <= optional


def test_stats_json_has_every_documented_key(replay: Path, capsys) -> None:
    block = re.search(r"## `stats --json`.*?```json\n(.*?)```", CONTRACTS, re.S).group(1)
    documented = set(json.loads(block)[0])
    assert main(["stats", str(replay), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(documented <= set(r) for r in rows)


def test_stats_by_kernel_json_adds_the_kernel(replay: Path, capsys) -> None:
    documented = set(json.loads(re.search(r"## `stats --json`.*?```json\n(.*?)```", CONTRACTS, re.S).group(1))[0])
    assert main(["stats", str(replay), "--by", "kernel", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(documented | {"kernel"} <= set(r) for r in rows)
    assert {r["op"] for r in rows} == {"cudaLaunchKernel"}
