"""The SDK client for the spy/footprint tests; writes its own view of the exchange as JSON.

    spy_client.py REF.json stdio N BIG_BYTES -- SERVER_CMD...
    spy_client.py REF.json http|https URL N BIG_BYTES [CA_CERT]
    spy_client.py REF.json calls JSON_LIST -- SERVER_CMD...      (tool calls [[name, args], ...])

The reference: every tool call made, in order, with the structured result the client received.
"""

from __future__ import annotations

import json
import os
import sys

import anyio
from mcp import Client, StdioServerParameters


def _result(r) -> object:
    if r.structured_content is not None:
        return r.structured_content
    return [c.text for c in r.content if getattr(c, "text", None) is not None]


async def exercise(client: Client, calls: list) -> list:
    ref = [{"method": "tools/list", "tools": sorted(t.name for t in (await client.list_tools()).tools)}]
    for name, args in calls:
        r = await client.call_tool(name, args)
        ref.append({"method": "tools/call", "tool": name, "is_error": bool(r.is_error), "result": _result(r)})
    return ref


def standard_calls(n: int, big: int) -> list:
    calls = [["add", {"a": i, "b": 1}] for i in range(n - 1)]
    calls.append(["size", {"blob": "x" * big}])
    return calls


async def main(argv: list[str]) -> None:
    out, mode = argv[0], argv[1]
    if mode in ("http", "https"):
        url, n, big = argv[2], int(argv[3]), int(argv[4])
        target: object = url
        if mode == "https":
            import httpx
            from mcp.client.streamable_http import streamable_http_client

            http = httpx.AsyncClient(verify=argv[5], timeout=30)
            target = streamable_http_client(url, http_client=http)
        calls = standard_calls(n, big)
    else:
        sep = argv.index("--")
        # The SDK passes servers only a few variables by default; the tests configure them by env.
        server = StdioServerParameters(command=argv[sep + 1], args=argv[sep + 2 :], env=dict(os.environ))
        target = server
        calls = json.loads(argv[2]) if mode == "calls" else standard_calls(int(argv[2]), int(argv[3]))
    async with Client(target, mode="legacy") as c:
        ref = await exercise(c, calls)
    with open(out, "w") as f:
        json.dump(ref, f)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
