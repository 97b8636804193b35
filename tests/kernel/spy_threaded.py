"""A thread-per-request MCP stdio server and the SDK client that drives it, for the per-thread
attribution test.

    spy_threaded.py server                   the server: each tools/call on its own thread, which
                                             opens the file it names, runs a child when asked,
                                             sleeps, and writes its own response
    spy_threaded.py client REF.json A B      the SDK client: starts the server, calls read_slow on
                                             A (with a child) and on B concurrently, then on A alone
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

HOLD_S = 0.4  # each call's window: long enough that the two concurrent ones overlap
lock = threading.Lock()


def reply(msg: dict) -> None:
    with lock:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def call(rid: object, args: dict) -> None:
    with open(args["path"]) as f:
        text = f.read()
    if args.get("child"):
        subprocess.run(["/bin/echo", "child of", args["path"]], stdout=subprocess.DEVNULL, check=True)
    time.sleep(HOLD_S)
    reply({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": text}], "isError": False}})


TOOL = {"name": "read_slow", "description": "Read a file slowly.", "inputSchema": {
    "type": "object", "properties": {"path": {"type": "string"}, "child": {"type": "boolean"}}, "required": ["path"]}}


def serve() -> None:
    for line in sys.stdin:
        msg = json.loads(line)
        method, rid = msg.get("method"), msg.get("id")
        if method == "initialize":
            reply({"jsonrpc": "2.0", "id": rid, "result": {
                "protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                "serverInfo": {"name": "spy-threaded-server", "version": "1.0.0"}}})
        elif method == "tools/list":
            reply({"jsonrpc": "2.0", "id": rid, "result": {"tools": [TOOL]}})
        elif method == "tools/call":
            threading.Thread(target=call, args=(rid, msg["params"]["arguments"])).start()
        elif rid is not None:
            reply({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "method not found"}})


async def drive(ref: str, a: str, b: str) -> None:
    import anyio
    from mcp import Client, StdioServerParameters

    server = StdioServerParameters(command=sys.executable, args=[__file__, "server"], env=dict(os.environ))
    texts: dict[str, str] = {}
    async with Client(server, mode="legacy") as c:

        async def one(key: str, args: dict) -> None:
            texts[key] = (await c.call_tool("read_slow", args)).content[0].text

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "a", {"path": a, "child": True})
            await anyio.sleep(0.05)  # b's request follows a's, while a is still being handled
            tg.start_soon(one, "b", {"path": b})
        await one("alone", {"path": a})
    with open(ref, "w") as f:
        json.dump(texts, f)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    else:
        import anyio

        anyio.run(drive, *sys.argv[2:5])
