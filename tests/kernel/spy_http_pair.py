"""Both ends of streamable HTTP for the spy tests, as one command to trace: starts spy_server.py on
a free port (TLS when CERT and KEY are given), waits until it listens, runs the SDK client against
it (spy_client.py, or with --node the TypeScript SDK's client, tests/node/sdk_client.mjs), then
stops the server.

    spy_http_pair.py [--node] REF.json N BIG_BYTES [CERT KEY]
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as c:
            if c.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("test MCP HTTP server did not start")
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    node = argv[:1] == ["--node"]
    if node:
        argv = argv[1:]
    ref, n, big, tls = argv[0], argv[1], argv[2], argv[3:5]
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "spy_server.py"), "http", str(port), *tls])
    try:
        wait_listening(port, server)
        scheme = "https" if tls else "http"
        url = f"{scheme}://127.0.0.1:{port}/mcp"
        if node:
            env = dict(os.environ, NODE_EXTRA_CA_CERTS=tls[0]) if tls else None
            return subprocess.run(["node", str(HERE.parent / "node" / "sdk_client.mjs"), ref, url, n, big], env=env).returncode
        client = [sys.executable, str(HERE / "spy_client.py"), ref, scheme, url, n, big]
        return subprocess.run(client + tls[:1]).returncode
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
