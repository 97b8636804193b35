"""A small MCP server (SDK `MCPServer`) for the wire tests: stdio by default, `http PORT` for streamable HTTP."""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("wire-test-server", version="1.2.3", log_level="CRITICAL")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def echo(text: str) -> str:
    """Echo the text back, padded so responses exceed one capture chunk."""
    return text * 3


@server.tool()
def fail(reason: str) -> str:
    """Always raise, to produce a tool error."""
    raise ValueError(reason)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
