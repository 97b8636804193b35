"""The `mcp-tool` scenario: a real MCP client (SDK, stdio) calling a real MCP server whose tools spawn
grep and read files, recorded by `whyprobe footprint`; shown as the footprint table plus the
JSON-RPC exchange the wire capture saw (what `whyprobe spy` prints live).

The live run goes through the footprint command itself (commands/demo.py calls it); this module
holds what both the live run and the replay need: the notes, the client command, and reading
footprints and traffic back from a database.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from whyprobe.demo.build import SRC_DIR

CLIENT = SRC_DIR / "mcp_notes_client.py"
SERVER = SRC_DIR / "mcp_notes_server.py"
NOTES = {
    "gpu-latency.md": "p99 step time is 40x the median: check the GPU latency tail first.\n",
    "gpu-kernels.md": "Tiny GPU kernels make a loop launch-bound; capture them in a CUDA graph.\n",
    "groceries.md": "eggs, flour, coffee\n",
}


def write_notes(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in NOTES.items():
        (folder / name).write_text(text)
    return folder


def client_command(notes: Path) -> list[str]:
    """The client, which starts the server as its child over stdio: what footprint --cmd runs."""
    return [sys.executable, str(CLIENT), sys.executable, str(SERVER), str(notes)]


def footprints(db: Path) -> list:
    """Every answered tools/call in `db` with its footprint, derived again from the recorded events."""
    from whyprobe.analyze import footprint as fp

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return fp.analyze(conn)
    finally:
        conn.close()


def footprint_doc(db: Path) -> dict:
    """The `footprint --json` document of `db` (what the scenario's check judges)."""
    from whyprobe.reporters.footprint import to_json

    return to_json(footprints(db))


def traffic(db: Path) -> list[str]:
    """One line per JSON-RPC request seen on the wire, with its response's latency."""
    from whyprobe.units import fmt_ns

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT q.method, q.tool_name, q.kind, r.latency_ns, r.kind FROM mcp_messages q "
            "LEFT JOIN mcp_messages r ON r.request_id = q.id "
            "WHERE q.direction = 'client->server' ORDER BY q.timestamp"
        ).fetchall()
    finally:
        conn.close()
    lines = []
    for method, tool, kind, latency, answer in rows:
        what = f"{method} {tool}" if tool else method
        if kind == "notification":
            lines.append(f"  {what} (notification)")
        else:
            lines.append(f"  {what}: {answer or 'no answer'} in {fmt_ns(latency) if latency else '?'}")
    return lines
