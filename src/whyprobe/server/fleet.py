"""Fan a SQL query out to other `whyprobe mcp --http` servers and merge the rows.

Used by `whyprobe query --nodes` and the `query_fleet` tool. Each node is asked
through the SDK client (its `run_sql` tool); concurrency is bounded, every node
has its own timeout, and a failing node is named instead of failing the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio


@dataclass
class FleetResult:
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    ok_nodes: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def node_url(node: str) -> str:
    """'host:port' → http://host:port/mcp; a full URL is kept (https for TLS servers)."""
    if "://" in node:
        return node if node.rstrip("/").endswith("/mcp") else node.rstrip("/") + "/mcp"
    return f"http://{node}/mcp"


async def _ask(node: str, sql: str, token: str | None, ca_file: str | None, timeout_s: float) -> dict:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    import ssl

    verify: Any = ssl.create_default_context(cafile=ca_file) if ca_file else True
    async with httpx2.AsyncClient(headers=headers, verify=verify, timeout=httpx2.Timeout(timeout_s)) as http:
        async with Client(streamable_http_client(node_url(node), http_client=http), read_timeout_seconds=timeout_s) as client:
            res = await client.call_tool("run_sql", {"sql": sql})
    if res.is_error:
        text = " ".join(getattr(c, "text", "") for c in res.content)
        raise RuntimeError(text or "run_sql failed")
    return res.structured_content or {}


def _reason(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return _reason(exc.exceptions[0])
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    if "401" in text:
        return "unauthorized (401): wrong or missing bearer token"
    if "connect" in text.lower() or isinstance(exc, OSError):
        return f"unreachable ({text})"
    return text


async def fan_out_sql_async(nodes: list[str], sql: str, *, timeout_s: float = 10.0, token: str | None = None, ca_file: str | None = None, concurrency: int = 8) -> FleetResult:
    limiter = anyio.CapacityLimiter(max(1, concurrency))
    answers: dict[str, dict] = {}
    result = FleetResult()

    async def one(node: str) -> None:
        async with limiter:
            try:
                with anyio.fail_after(timeout_s):
                    answers[node] = await _ask(node, sql, token, ca_file, timeout_s)
            except Exception as exc:  # noqa: BLE001 - a node's failure is reported by name, never raised
                result.failed[node] = _reason(exc)

    async with anyio.create_task_group() as tg:
        for node in nodes:
            tg.start_soon(one, node)
    for node in nodes:
        if node not in answers:
            continue
        doc = answers[node]
        cols = list(doc.get("columns", []))
        if not result.columns:
            result.columns = ["node", *cols]
        elif result.columns[1:] != cols:
            result.failed[node] = f"different columns {cols} (expected {result.columns[1:]})"
            continue
        result.rows.extend([node, *r] for r in doc.get("rows", []))
        result.ok_nodes.append(node)
    return result


def fan_out_sql(nodes: list[str], sql: str, **kwargs: Any) -> FleetResult:
    """Blocking form (runs its own event loop; call it from a worker thread, not inside a loop)."""
    return anyio.run(lambda: fan_out_sql_async(nodes, sql, **kwargs))
