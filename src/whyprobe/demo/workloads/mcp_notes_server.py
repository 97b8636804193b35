"""The `mcp-tool` demo's MCP server (SDK MCPServer, stdio): a notes folder with two tools whose
host footprint differs — one spawns grep over every note, one opens a single file.

    python mcp_notes_server.py NOTES_DIR
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer

NOTES = Path(sys.argv[1]).resolve()
server = MCPServer("notes", version="1.0.0", log_level="CRITICAL")


@server.tool()
def search_notes(pattern: str) -> list[str]:
    """Names of the notes that mention `pattern` (case-insensitive)."""
    found = subprocess.run(["grep", "-ril", "--", pattern, str(NOTES)], capture_output=True, text=True, check=False)
    return sorted(Path(p).name for p in found.stdout.split())


@server.tool()
def read_note(name: str) -> str:
    """The text of one note."""
    path = (NOTES / name).resolve()
    if path.parent != NOTES:
        raise ValueError(f"{name!r} is not a note")
    return path.read_text()


if __name__ == "__main__":
    server.run()
