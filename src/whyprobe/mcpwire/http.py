"""HTTP/1.1 for MCP's streamable HTTP transport: one direction of one connection, request or
response side, as the bytes come. Bodies by Content-Length or chunked; `text/event-stream`
bodies are cut into SSE events as they arrive (GET streams never end). Yields each JSON body or
SSE event's data as a `Frame` with the head it came under. Garbage makes it resync at the next
start line."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from whyprobe.mcpwire.jsonrpc import DEFAULT_CAP, Frame
from whyprobe.mcpwire.redact import redact_headers

_START = re.compile(
    rb"(?:GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH) [^\s]+ HTTP/1\.[01]\r\n|HTTP/1\.[01] \d{3}(?: [^\r\n]*)?\r\n"
)
_MAX_HEAD = 64 * 1024


def looks_like_http(data: bytes) -> bool:
    return _START.match(data[:8192]) is not None or any(
        data.startswith(p) for p in (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"HTTP/1.")
    )


@dataclass
class HttpHead:
    is_request: bool
    ts_ns: int
    method: str | None = None
    path: str | None = None
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names, secrets redacted

    @property
    def session_id(self) -> str | None:
        return self.headers.get("mcp-session-id")

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def summary(self) -> dict[str, object]:
        d: dict[str, object] = {"request": f"{self.method} {self.path}"} if self.is_request else {"status": self.status}
        d["headers"] = self.headers
        return d


def parse_head(raw: bytes, ts_ns: int) -> HttpHead | None:
    lines = raw.decode("latin-1").split("\r\n")
    first = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    headers = redact_headers(headers)
    if first[0].startswith("HTTP/"):
        try:
            return HttpHead(False, ts_ns, status=int(first[1]), headers=headers)
        except (IndexError, ValueError):
            return None
    if len(first) < 3:
        return None
    return HttpHead(True, ts_ns, method=first[0], path=first[1], headers=headers)


class _Body:
    """Collects one JSON body up to the cap."""

    def __init__(self, cap: int, ts_ns: int) -> None:
        self.cap = cap
        self.ts_ns = ts_ns
        self.buf = bytearray()
        self.size = 0
        self.lost = False

    def feed(self, data: bytes, ts_ns: int) -> list[Frame]:
        if self.size == 0:
            self.ts_ns = ts_ns
        self.size += len(data)
        room = self.cap - len(self.buf)
        if len(data) > room:
            self.lost = True
        self.buf += data[: max(room, 0)]
        return []

    def gap(self, nbytes: int) -> None:
        self.size += nbytes
        self.lost = True

    def end(self) -> list[Frame]:
        data = bytes(self.buf).strip()
        return [Frame(data, self.ts_ns, self.size, self.lost)] if data else []


class _Sse:
    """text/event-stream: `data:` lines joined with newlines, one event per blank line."""

    def __init__(self, cap: int, ts_ns: int) -> None:
        self.cap = cap
        self.line = bytearray()
        self.data = bytearray()
        self.has_data = False
        self.ts_ns = ts_ns
        self.size = 0
        self.lost = False

    def feed(self, data: bytes, ts_ns: int) -> list[Frame]:
        out: list[Frame] = []
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                if len(self.line) < self.cap:
                    self.line += data[pos : pos + self.cap - len(self.line)]
                else:
                    self.lost = True
                self.size += len(data) - pos
                if not self.has_data:
                    self.ts_ns = ts_ns
                break
            if not self.has_data and not self.line:
                self.ts_ns = ts_ns
            self.line += data[pos:nl]
            self.size += nl - pos
            self._line(bytes(self.line).rstrip(b"\r"), out)
            self.line.clear()
            pos = nl + 1
        return out

    def _line(self, line: bytes, out: list[Frame]) -> None:
        if not line:
            if self.has_data:
                out.append(Frame(bytes(self.data), self.ts_ns, self.size, self.lost))
            self.data.clear()
            self.has_data = False
            self.size = 0
            self.lost = False
            return
        name, _, value = line.partition(b":")
        if name != b"data":
            return
        if value.startswith(b" "):
            value = value[1:]
        if self.has_data:
            self.data += b"\n"
        room = self.cap - len(self.data)
        if len(value) > room:
            self.lost = True
        self.data += value[: max(room, 0)]
        self.has_data = True

    def gap(self, nbytes: int) -> None:
        self.lost = True
        self.size += nbytes

    def end(self) -> list[Frame]:
        out: list[Frame] = []
        if self.line:
            self._line(bytes(self.line).rstrip(b"\r"), out)
            self.line.clear()
        self._line(b"", out)
        return out


_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE = range(7)


class HttpStream:
    """One direction of an HTTP/1.1 connection. `feed` returns (head, frame) pairs: a frame is a
    JSON body or an SSE event's data."""

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.state = _HEAD
        self.head: HttpHead | None = None
        self.body: _Body | _Sse | None = None
        self.left = 0
        self.garbage_bytes = 0
        self._ts = 0

    def feed(self, data: bytes, ts_ns: int) -> list[tuple[HttpHead, Frame]]:
        self.buf += data
        self._ts = ts_ns
        out: list[tuple[HttpHead, Frame]] = []
        while self.buf and self._step(out):
            pass
        return out

    def _frames(self, frames: list[Frame], out: list[tuple[HttpHead, Frame]]) -> None:
        assert self.head is not None
        out.extend((self.head, f) for f in frames)

    def _end_message(self, out: list[tuple[HttpHead, Frame]]) -> None:
        if self.body is not None:
            self._frames(self.body.end(), out)
        self.body = None
        self.state = _HEAD

    def _resync(self) -> None:
        """Drop bytes up to the next HTTP start line, or all but a tail that may begin one."""
        m = _START.search(self.buf, 1)
        drop = m.start() if m else max(len(self.buf) - 32, 0)
        self.garbage_bytes += drop
        del self.buf[:drop]

    def _step(self, out: list[tuple[HttpHead, Frame]]) -> bool:
        """Consume what the current state can; False when more bytes are needed."""
        if self.state == _HEAD:
            if not _START.match(self.buf):
                if b"\r\n" in self.buf or len(self.buf) > 8192:
                    before = len(self.buf)
                    self._resync()
                    return len(self.buf) < before
                return False
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD:
                    self._resync()
                    return True
                return False
            head = parse_head(bytes(self.buf[:end]), self._ts)
            del self.buf[: end + 4]
            if head is None:
                return True
            self._begin(head)
            return True
        if self.state == _LENGTH:
            n = min(self.left, len(self.buf))
            self._frames(self.body.feed(bytes(self.buf[:n]), self._ts), out)
            del self.buf[:n]
            self.left -= n
            if self.left == 0:
                self._end_message(out)
            return True
        if self.state == _UNTIL_CLOSE:
            self._frames(self.body.feed(bytes(self.buf), self._ts), out)
            self.buf.clear()
            return False
        if self.state in (_CHUNK_SIZE, _TRAILER):
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                if len(self.buf) > 1024:
                    self._end_message(out)
                    self._resync()
                    return True
                return False
            line = bytes(self.buf[:nl])
            del self.buf[: nl + 2]
            if self.state == _TRAILER:
                if not line:
                    self._end_message(out)
                return True
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                self._end_message(out)
                self.buf[:0] = line + b"\r\n"
                self._resync()
                return True
            if size == 0:
                self.state = _TRAILER
            else:
                self.left = size
                self.state = _CHUNK_DATA
            return True
        if self.state == _CHUNK_DATA:
            n = min(self.left, len(self.buf))
            self._frames(self.body.feed(bytes(self.buf[:n]), self._ts), out)
            del self.buf[:n]
            self.left -= n
            if self.left == 0:
                self.state = _CHUNK_END
            return True
        if self.state == _CHUNK_END:
            if len(self.buf) < 2:
                return False
            if self.buf[:2] == b"\r\n":
                del self.buf[:2]
                self.state = _CHUNK_SIZE
            else:
                self._end_message(out)
                self._resync()
            return True
        return False

    def _begin(self, head: HttpHead) -> None:
        self.head = head
        h = head.headers
        streaming = head.content_type == "text/event-stream"
        self.body = _Sse(self.cap, head.ts_ns) if streaming else _Body(self.cap, head.ts_ns)
        if "chunked" in h.get("transfer-encoding", "").lower():
            self.state = _CHUNK_SIZE
            return
        length = h.get("content-length")
        if length is not None and length.strip().isdigit():
            self.left = int(length)
            self.state = _LENGTH if self.left else _HEAD
            if not self.left:
                self.body = None
            return
        if head.is_request or head.status is None or head.status < 200 or head.status in (204, 304):
            self.state = _HEAD
            self.body = None
            return
        self.state = _UNTIL_CLOSE

    def gap(self, nbytes: int) -> list[tuple[HttpHead, Frame]]:
        """`nbytes` were never captured: a body with a known length absorbs them; anything else ends
        the message here (truncated) and the bytes after the gap resync at the next start line."""
        out: list[tuple[HttpHead, Frame]] = []
        if self.state == _LENGTH and nbytes < self.left:
            self.body.gap(nbytes)
            self.left -= nbytes
            return out
        if self.body is not None:
            self.body.gap(nbytes)
            self._end_message(out)
        self.state = _HEAD
        self.buf.clear()
        return out

    def flush(self) -> list[tuple[HttpHead, Frame]]:
        out: list[tuple[HttpHead, Frame]] = []
        if self.state != _HEAD:
            self._end_message(out)
        return out
