"""Raw JSON-RPC to an MCP stdio server, including a batch (the SDK client never sends one).

    spy_batch.py OUT.json -- SERVER_CMD...

OUT.json: the lines the server answered with, parsed.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
BATCH = [
    {"jsonrpc": "2.0", "id": 101, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 40, "b": 2}}},
    {"jsonrpc": "2.0", "id": 102, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1, "b": 1}}},
]


def main() -> None:
    out = sys.argv[1]
    server = sys.argv[sys.argv.index("--") + 1 :]
    proc = subprocess.Popen(server, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    answers = []

    def send(obj) -> None:
        proc.stdin.write(json.dumps(obj).encode() + b"\n")
        proc.stdin.flush()

    def receive(timeout: float) -> bool:
        if select.select([proc.stdout], [], [], timeout)[0]:
            line = proc.stdout.readline()
            if line:
                answers.append(json.loads(line))
                return True
        return False

    send(INIT)
    receive(30)
    send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    send(BATCH)
    while sum(len(a) if isinstance(a, list) else 1 for a in answers) < 1 + len(BATCH) and receive(2):
        pass
    proc.stdin.close()
    proc.wait(10)
    with open(out, "w") as f:
        json.dump(answers, f)


if __name__ == "__main__":
    main()
