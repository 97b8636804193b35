"""JSON-RPC 2.0 framing and decoding.

`LineFramer` cuts one byte stream into newline-delimited frames (the stdio transport) and keeps
sync through garbage and capture gaps; `decode` turns a frame (a line, an HTTP body, an SSE
event's data) into JSON-RPC messages, batches included, and still finds id/method in a frame
that was cut at the size cap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_CAP = 1 << 20


@dataclass
class Frame:
    """One candidate message: its bytes (at most the cap), where and when it started."""

    data: bytes
    ts_ns: int
    size: int  # bytes the message had on the wire, including any not kept
    truncated: bool = False


@dataclass
class Rpc:
    """One decoded JSON-RPC message."""

    kind: str  # request | response | error | notification
    id: Any = None
    method: str | None = None
    body: dict[str, Any] | None = None  # None when the frame could not be decoded (truncated)
    raw: bytes = b""
    tool_name: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    batch: bool = False

    @property
    def id_json(self) -> str | None:
        return None if self.id is None else orjson.dumps(self.id).decode()


def _starts_message(data: bytes | bytearray) -> bool:
    """A frame starts with an object or a batch (leading whitespace allowed)."""
    head = bytes(data[:64]).lstrip()
    return head[:1] == b"{" or head[:1] == b"["


class LineFramer:
    """Newline-delimited JSON: one message per line. A line longer than `cap` keeps its first
    `cap` bytes and is reported truncated when its newline comes; garbage costs at most its line."""

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        self.cap = cap
        self._buf = bytearray()
        self._ts = 0
        self._size = 0  # bytes of the current line seen so far, kept or not
        self._lost = False  # the current line lost bytes (cap or gap)

    def feed(self, data: bytes, ts_ns: int) -> list[Frame]:
        out: list[Frame] = []
        pos = 0
        n = len(data)
        while pos < n:
            nl = data.find(b"\n", pos)
            end = n if nl < 0 else nl
            if self._size == 0:
                self._ts = ts_ns
            self._size += end - pos
            room = self.cap - len(self._buf)
            if end - pos > room:
                self._lost = True
                end_kept = pos + max(room, 0)
            else:
                end_kept = end
            self._buf += data[pos:end_kept]
            if nl < 0:
                break
            self._size += 1
            self._emit(out)
            pos = nl + 1
        return out

    def _emit(self, out: list[Frame]) -> None:
        line = bytes(self._buf).strip()
        if line:
            out.append(Frame(line, self._ts, self._size, self._lost))
        self._buf.clear()
        self._size = 0
        self._lost = False

    def gap(self, nbytes: int) -> list[Frame]:
        """`nbytes` of the stream were never captured: a line in progress ends here, truncated.
        Whatever follows the gap up to the next newline is a line of its own (garbage if it
        starts mid-message, a message if the gap fell between messages)."""
        out: list[Frame] = []
        if self._buf:
            self._size += nbytes
            self._lost = True
            self._emit(out)
        self._buf.clear()
        self._size = 0
        self._lost = False
        return out

    def flush(self) -> list[Frame]:
        """End of stream: a last line without its newline is still a message if it decodes."""
        out: list[Frame] = []
        self._emit(out)
        return out


_RPC_START = re.compile(rb'[\[{]\s*"jsonrpc"')


def decode(frame: Frame) -> list[Rpc]:
    """JSON-RPC messages in a frame; [] for JSON that is not JSON-RPC and for garbage. Garbage
    glued to the front of a message (no newline between) is skipped up to the message start."""
    data = frame.data
    if not _starts_message(data):
        m = _RPC_START.search(data)
        if not m:
            return []
        data = data[m.start():]
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        if frame.truncated:
            rpc = scan_prefix(data)
            return [rpc] if rpc else []
        m = _RPC_START.search(data, 1)
        return decode(Frame(data[m.start():], frame.ts_ns, frame.size)) if m else []
    if isinstance(value, list):
        msgs = [m for m in (_classify(v, b"") for v in value) if m]
        for m in msgs:
            m.batch = True
            m.raw = orjson.dumps(m.body)
        return msgs
    rpc = _classify(value, data)
    return [rpc] if rpc else []


def _classify(value: Any, raw: bytes) -> Rpc | None:
    if not isinstance(value, dict):
        return None
    method = value.get("method")
    has_id = "id" in value and value["id"] is not None
    if isinstance(method, str):
        kind = "request" if has_id else "notification"
    elif "error" in value and has_id or isinstance(value.get("error"), dict):
        kind = "error"
    elif "result" in value and has_id:
        kind = "response"
    else:
        return None
    if value.get("jsonrpc") not in ("2.0", None):
        return None
    rpc = Rpc(kind=kind, id=value.get("id"), method=method if isinstance(method, str) else None, body=value, raw=raw)
    params = value.get("params")
    if rpc.method == "tools/call" and isinstance(params, dict) and isinstance(params.get("name"), str):
        rpc.tool_name = params["name"]
    if kind == "error":
        err = value.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            rpc.error_code = code if isinstance(code, int) else None
            rpc.error_message = str(err.get("message", ""))
    return rpc


# Tokens of a JSON text: strings (escapes included) and structural characters.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null')


def scan_prefix(data: bytes) -> Rpc | None:
    """id, method and kind from the top level of a cut-off JSON object (no full parse possible)."""
    if not data.lstrip().startswith(b"{"):
        return None
    depth = 0
    key: bytes | None = None
    expect_key = False
    found: dict[bytes, Any] = {}
    params_name: str | None = None
    in_params = False
    for m in _TOKEN.finditer(data):
        tok = m.group(0)
        if tok in (b"{", b"["):
            if depth == 1 and key is not None:
                found[key] = ...
                in_params = key == b'"params"' and tok == b"{"
            depth += 1
            expect_key = tok == b"{"
            key = None
            continue
        if tok in (b"}", b"]"):
            depth -= 1
            if depth == 1:
                in_params = False
            continue
        if tok == b",":
            expect_key = True
            continue
        if tok == b":":
            expect_key = False
            continue
        if expect_key:
            key = tok
            continue
        if depth == 1 and key is not None:
            found[key] = orjson.loads(tok)
        elif depth == 2 and in_params and key == b'"name"' and tok.startswith(b'"'):
            params_name = orjson.loads(tok)
        key = None
    method = found.get(b'"method"')
    rpc_id = found.get(b'"id"')
    if rpc_id is ...:
        rpc_id = None
    if isinstance(method, str):
        kind = "request" if rpc_id is not None else "notification"
    elif b'"error"' in found:
        kind = "error"
    elif b'"result"' in found:
        kind = "response"
    elif rpc_id is not None:
        kind = "response"  # the result key was past the cut
    else:
        return None
    rpc = Rpc(kind=kind, id=rpc_id, method=method if isinstance(method, str) else None, raw=data)
    if rpc.method == "tools/call":
        rpc.tool_name = params_name
    return rpc
