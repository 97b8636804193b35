"""`query_fleet` over real servers: two live `whyprobe mcp --http` nodes and one dead one."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from test_mcp_transports import PY, free_port, start, stop

NODES = ("gpu-node-01", "gpu-node-02")


@pytest.fixture(scope="module")
def live_nodes(tmp_path_factory: pytest.TempPathFactory):
    data = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    env = {k: v for k, v in os.environ.items() if k != "WHYPROBE_MCP_TOKEN"}
    procs, addrs = [], []
    try:
        for node in NODES:
            port = free_port()
            audit = tmp_path_factory.mktemp(node) / "a.sqlite"
            procs.append(start(["--db", str(data / f"sample-{node}.db"), "--http", "--bind", f"127.0.0.1:{port}", "--audit", str(audit)], port, env))
            addrs.append(f"127.0.0.1:{port}")
        yield data, addrs
    finally:
        for proc in procs:
            stop(proc)


def test_query_fleet_merges_two_live_nodes_and_names_the_dead_one(live_nodes, tmp_path: Path) -> None:
    data, addrs = live_nodes
    dead = f"127.0.0.1:{free_port()}"
    params = StdioServerParameters(command=PY, args=["-m", "whyprobe", "mcp", "--db", str(data / "sample-cluster.db"), "--audit", str(tmp_path / "a.sqlite")])
    sql = "SELECT source, op, COUNT(*) AS n FROM events GROUP BY source, op"

    async def go():
        async with Client(params) as client:
            return await client.call_tool("query_fleet", {"sql": sql, "nodes": [*addrs, dead], "timeout_s": 5})

    res = anyio.run(go)
    assert not res.is_error
    out = res.structured_content
    # THEN each live node answers its own rows, tagged with its node, and the dead node is named
    assert out["columns"] == ["node", "source", "op", "n"]
    want = []
    for addr, node in zip(addrs, NODES):
        conn = sqlite3.connect(f"file:{data / f'sample-{node}.db'}?mode=ro", uri=True)
        want += [(addr, *row) for row in conn.execute(sql)]
        conn.close()
    assert sorted(map(tuple, out["rows"])) == sorted(want) and len(want) == 6
    assert out["ok_nodes"] == addrs
    assert out["partial"] is True
    assert list(out["failed_nodes"]) == [dead] and out["failed_nodes"][dead].startswith("unreachable")
    assert f"from 2/3 node(s); partial: {dead}: unreachable" in res.content[0].text
