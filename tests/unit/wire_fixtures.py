"""Real MCP traffic for the wire tests, and a stand-in for the eBPF capture that turns recorded
bytes into payload chunks the way wire.bpf.c emits them."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

from whyprobe.events import PL_PIPE, PL_TCP, PL_TRUNCATED, PayloadKind

HERE = Path(__file__).resolve().parent
PY = sys.executable
SERVER = str(HERE / "wire_sdk_server.py")
CLIENT_PID, SERVER_PID = 1000, 2000
C2S_PIPE, S2C_PIPE = 501, 502  # server stdin, server stdout
CHUNK = 4096

Record = tuple[int, str, bytes, int]  # ts_ns, "c2s" | "s2c", bytes, connection number (HTTP)


async def _exercise(client: Client) -> None:
    await client.list_tools()
    await client.call_tool("add", {"a": 1, "b": 2})
    await client.call_tool("echo", {"text": "x" * 3000})  # the response spans several 4 KiB chunks
    await client.call_tool("fail", {"reason": "boom"})


def record_stdio(mode: str = "legacy") -> list[Record]:
    """The SDK client talking to the SDK server over stdio, through a relay that logs both pipes."""
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "rec.jsonl"
        params = StdioServerParameters(command=PY, args=[str(HERE / "wire_relay.py"), str(log), PY, SERVER])

        async def go() -> None:
            async with Client(params, mode=mode) as c:
                await _exercise(c)

        anyio.run(go)
        return [(r["ts"], r["dir"], bytes.fromhex(r["hex"]), 1) for r in map(json.loads, log.read_text().splitlines())]


def record_http() -> list[Record]:
    """Streamable HTTP (legacy handshake: initialize, Mcp-Session-Id, SSE responses, GET stream)."""
    from wire_tcp_recorder import RecordingProxy

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([PY, SERVER, "http", str(port)], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as c:
                if c.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("test MCP HTTP server did not start")
            time.sleep(0.05)
        proxy = RecordingProxy(port)

        async def go() -> None:
            async with Client(f"http://127.0.0.1:{proxy.port}/mcp", mode="legacy") as c:
                await _exercise(c)

        anyio.run(go)
        time.sleep(0.1)
        proxy.close()
        return [(ts, d, data, n) for ts, n, d, data in sorted(proxy.records)]
    finally:
        proc.terminate()
        proc.wait(10)


def _calls(data: bytes, rng: random.Random, max_call: int) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = rng.randint(1, max_call)
        out.append(data[pos : pos + n])
        pos += n
    return out


def header(ts: int, conn: int, offset: int, pid: int, fd: int, n: int, total: int, kind: int, flags: int) -> dict:
    return {"ts_ns": ts, "conn": conn, "offset": offset, "pid": pid, "tid": pid, "fd": fd, "len": n,
            "total": total, "kind": int(kind), "flags": flags}


def call_chunks(ts: int, conn: int, pid: int, fd: int, data: bytes, kind: int, flags: int, cap: int = 1 << 20) -> list[tuple[dict, bytes]]:
    """One read/write call as wire.bpf.c emits it: 4 KiB chunks, offsets from the call start,
    at most `cap` bytes captured and PL_TRUNCATED beyond."""
    kept = data[:cap]
    if len(data) > cap:
        flags |= PL_TRUNCATED
    return [(header(ts, conn, off, pid, fd, len(kept[off : off + CHUNK]), len(data), kind, flags), kept[off : off + CHUNK])
            for off in range(0, len(kept), CHUNK)]


def to_chunks(records: list[Record], rng: random.Random, *, client: bool = True, server: bool = True,
              transport: str = "pipe", max_call: int = 3000) -> list[tuple[dict, bytes]]:
    """What tracing the client and/or server would capture: the sender's writes and the receiver's
    reads of the same bytes, each split into calls at independent random boundaries."""
    events: list[tuple[int, int, tuple[dict, bytes]]] = []
    seq = 0
    for ts, direction, data, n in records:
        c2s = direction == "c2s"
        if transport == "pipe":
            conn, flags = (C2S_PIPE if c2s else S2C_PIPE), PL_PIPE
            wfd, rfd = (4, 0) if c2s else (1, 5)
        else:
            conn, flags = (0xABC000 + n) | (1 << 63), PL_TCP
            wfd = rfd = 3
        sender, receiver = (CLIENT_PID, SERVER_PID) if c2s else (SERVER_PID, CLIENT_PID)
        ends = []
        if (client and c2s) or (server and not c2s):
            ends.append((sender, wfd, PayloadKind.WRITE, 0))
        if (server and c2s) or (client and not c2s):
            ends.append((receiver, rfd, PayloadKind.READ, 1000))
        for pid, fd, kind, delay in ends:
            for i, call in enumerate(_calls(data, rng, max_call)):
                for hdr, part in call_chunks(ts + delay + i, conn, pid, fd, call, kind, flags):
                    seq += 1
                    events.append((hdr["ts_ns"], seq, (hdr, part)))
    events.sort(key=lambda e: (e[0], e[1]))
    return [e[2] for e in events]


def wire_messages(records: list[Record]) -> list[dict]:
    """Every JSON-RPC message in the recorded bytes (stdio: the lines), for the expected side."""
    out = []
    for direction in ("c2s", "s2c"):
        stream = b"".join(data for _, d, data, _ in records if d == direction)
        for line in stream.splitlines():
            if line.strip():
                out.append({"dir": direction, **json.loads(line)})
    return out
