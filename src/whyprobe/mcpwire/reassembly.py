"""Capture chunks back into byte streams.

The capture side emits each read/write call as chunks of at most 4 KiB: `offset` counts from the
start of the call, `total` is what the call moved, PL_TRUNCATED says only the first
`capture_cap` bytes were copied. Chunks of one call are collected per (stream, tid) so threads
writing the same fd never interleave inside a call; a completed call is handed on whole, with
the bytes it never captured reported as a gap so the framers resync instead of gluing two
messages together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from whyprobe.events import PL_PIPE, PL_TCP, PL_TLS, PL_TRUNCATED, PL_UNIX, PayloadKind

WRITE_KINDS = (PayloadKind.WRITE, PayloadKind.SSL_WRITE)
WIRE_KINDS = (PayloadKind.READ, PayloadKind.WRITE, PayloadKind.SSL_READ, PayloadKind.SSL_WRITE)


@dataclass(frozen=True)
class Chunk:
    ts_ns: int
    conn: int
    offset: int
    pid: int
    tid: int
    fd: int
    len: int
    total: int
    kind: int
    flags: int

    @classmethod
    def of(cls, header: Any) -> Chunk:
        """From a PAYLOAD_DTYPE record (np.void) or a dict with the same field names."""
        return cls(*(int(header[f]) for f in ("ts_ns", "conn", "offset", "pid", "tid", "fd", "len", "total", "kind", "flags")))

    @property
    def is_write(self) -> bool:
        return self.kind in WRITE_KINDS


def transport_of(chunk: Chunk) -> str:
    if chunk.kind in (PayloadKind.SSL_READ, PayloadKind.SSL_WRITE) or chunk.flags & PL_TLS:
        return "tls"
    if chunk.flags & PL_PIPE:
        return "pipe"
    if chunk.flags & PL_UNIX:
        return "unix"
    if chunk.flags & PL_TCP:
        return "tcp"
    return "sock"


def conn_ref(chunk: Chunk) -> str:
    """The connection's name, the same at both ends where the kernel id is: pipe inode, unix
    socket pair, TCP 4-tuple hash. TLS is named by its TCP connection where the capture bound the
    SSL* to its socket (PL_TLS|PL_TCP); an unbound SSL* is only meaningful inside its process, so
    that name carries the pid. Without a kernel id, fall back to the process's fd."""
    t = transport_of(chunk)
    if t == "tls":
        if chunk.flags & PL_TCP:
            return f"tls:{chunk.conn:x}"
        return f"tls:{chunk.pid}:{chunk.conn:x}"
    if chunk.conn == 0:
        return f"fd:{chunk.pid}:{chunk.fd}"
    return f"{t}:{chunk.conn}" if t == "pipe" else f"{t}:{chunk.conn:x}"


@dataclass(frozen=True)
class StreamKey:
    pid: int
    conn: str
    write: bool  # the process wrote these bytes (else it read them)
    transport: str


@dataclass
class Piece:
    """Bytes of one stream in order; `gap` bytes were lost just before `data`; `tid`: the thread
    whose read/write call moved them."""

    key: StreamKey
    ts_ns: int
    data: bytes
    gap: int = 0
    tid: int = 0


class _Call:
    __slots__ = ("ts_ns", "total", "want", "parts", "next")

    def __init__(self, chunk: Chunk, capture_cap: int) -> None:
        self.ts_ns = chunk.ts_ns
        self.total = chunk.total
        self.want = min(chunk.total, capture_cap) if chunk.flags & PL_TRUNCATED else chunk.total
        self.parts: list[tuple[int, bytes]] = []  # (gap before, data)
        self.next = 0


class Reassembler:
    def __init__(self, capture_cap: int = 1 << 20) -> None:
        self.capture_cap = capture_cap
        self._calls: dict[tuple[StreamKey, int], _Call] = {}
        self.lost_bytes = 0

    def feed(self, chunk: Chunk, data: bytes) -> list[Piece]:
        if chunk.kind not in WIRE_KINDS:
            return []
        key = StreamKey(chunk.pid, conn_ref(chunk), chunk.is_write, transport_of(chunk))
        data = data[: chunk.len]
        slot = (key, chunk.tid)
        out: list[Piece] = []
        call = self._calls.get(slot)
        if chunk.offset == 0 and call is not None:
            out += self._finish(key, self._calls.pop(slot), chunk.tid)
            call = None
        if call is None:
            if chunk.offset == 0 and len(data) >= chunk.total and not chunk.flags & PL_TRUNCATED:
                return out + [Piece(key, chunk.ts_ns, data, 0, chunk.tid)]  # the common case: one chunk, one call
            call = self._calls[slot] = _Call(chunk, self.capture_cap)
        call.parts.append((max(chunk.offset - call.next, 0), data))
        call.next = max(call.next, chunk.offset + len(data))
        if call.next >= call.want:
            out += self._finish(key, self._calls.pop(slot), chunk.tid)
        return out

    def _finish(self, key: StreamKey, call: _Call, tid: int) -> list[Piece]:
        out = [Piece(key, call.ts_ns, data, gap, tid) for gap, data in call.parts]
        tail = call.total - call.next
        if tail > 0:
            out.append(Piece(key, call.ts_ns, b"", tail, tid))
        self.lost_bytes += tail + sum(g for g, _ in call.parts)
        return out

    def flush(self) -> list[Piece]:
        out: list[Piece] = []
        for (key, tid), call in list(self._calls.items()):
            out += self._finish(key, call, tid)
        self._calls.clear()
        return out
