"""The `mcp-tool` demo's MCP client (SDK Client over stdio): starts the server, lists its tools,
searches the notes and reads what it found.

    python mcp_notes_client.py SERVER_CMD...
"""

from __future__ import annotations

import os
import sys

import anyio
from mcp import Client, StdioServerParameters


async def main(server_cmd: list[str]) -> None:
    # The SDK passes a server only a few variables by default; the server needs the venv's.
    params = StdioServerParameters(command=server_cmd[0], args=server_cmd[1:], env=dict(os.environ))
    async with Client(params, mode="legacy") as client:
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        print("tools:", ", ".join(tools))
        for pattern in ("latency", "gpu"):
            hits = await client.call_tool("search_notes", {"pattern": pattern})
            names = hits.structured_content.get("result", []) if hits.structured_content else []
            print(f"search_notes({pattern!r}):", ", ".join(names) or "-")
            for name in names[:1]:
                note = await client.call_tool("read_note", {"name": name})
                print(f"read_note({name!r}): {len(note.content[0].text)} chars")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
