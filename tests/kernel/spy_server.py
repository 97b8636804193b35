"""An MCP server (SDK `MCPServer`) for the spy/footprint tests: stdio, or `http PORT [CERT KEY]`.

SPY_DESCRIBE, when set, replaces the `add` tool's description (drift and injection tests).
"""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer

server = MCPServer("spy-test-server", version="1.0.0", log_level="CRITICAL")


@server.tool(description=os.environ.get("SPY_DESCRIBE") or "Add two integers.")
def add(a: int, b: int) -> int:
    return a + b


@server.tool()
def size(blob: str) -> int:
    """Length of the text (large arguments)."""
    return len(blob)


@server.tool()
def read_file(path: str) -> str:
    """Read a file (footprint: the open shows up)."""
    with open(path) as f:
        return f.read()


@server.tool()
def count_rows(db: str, table: str) -> dict:
    """Rows of a SQLite table and the file's size in bytes. Loads sqlite3 on its first call and
    runs `wc` on the file (footprint: the tool's own file first, loading and the child's start
    grouped apart)."""
    import sqlite3
    import subprocess

    size = int(subprocess.run(["wc", "-c", db], capture_output=True, text=True, check=True).stdout.split()[0])
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
    return {"rows": rows, "bytes": size}


@server.tool()
def gpu_alloc(n: int) -> list[int]:
    """cudaMalloc of 1 MiB, n times, through the libcudart of the nvidia-cuda-runtime wheel; the
    distinct return codes (35 without a driver: the calls return at once, the probes fire)."""
    import ctypes
    from pathlib import Path

    import nvidia.cuda_runtime

    cudart = ctypes.CDLL(str(Path(nvidia.cuda_runtime.__path__[0]) / "lib" / "libcudart.so.12"))
    ptr = ctypes.c_void_p()
    return sorted({cudart.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(1 << 20)) for _ in range(n)})


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        port = int(sys.argv[2])
        if len(sys.argv) > 4:
            import uvicorn

            app = server.streamable_http_app()
            uvicorn.run(app, host="127.0.0.1", port=port, ssl_certfile=sys.argv[3], ssl_keyfile=sys.argv[4], log_level="critical")
        else:
            server.run("streamable-http", host="127.0.0.1", port=port)
    else:
        server.run()
