"""Capture chunks in, MCP messages out: reassembly → framing (stdio lines or HTTP) → JSON-RPC →
redaction → de-duplication → correlation, plus tools/list snapshots and drift.

The capture side only calls this:

    pipe = WirePipeline(ts_offset_ns=boot_to_unix_ns, comm_of=comm, cmdline_of=cmdline)
    for header, data in payload_records:          # PAYLOAD_DTYPE header (np.void or dict) + bytes
        for msg in pipe.feed(header, data): ...   # McpMessage, in report order
    pipe.flush()                                  # end of capture: partial messages out
    pipe.drain_tool_calls(), pipe.drain_snapshots(), pipe.drifts, pipe.sessions
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import orjson

from whyprobe.mcpwire.correlate import Correlator, Observation
from whyprobe.mcpwire.dedup import Deduplicator, digest
from whyprobe.mcpwire.http import HttpHead, HttpStream, looks_like_http
from whyprobe.mcpwire.jsonrpc import DEFAULT_CAP, Frame, LineFramer, Rpc, decode
from whyprobe.mcpwire.message import McpMessage, SessionInfo, ToolCall
from whyprobe.mcpwire.reassembly import Chunk, Piece, Reassembler, StreamKey
from whyprobe.mcpwire.redact import redact, redact_json_text
from whyprobe.mcpwire.toolscan import Drift, ToolSnapshot, drift, snapshot

_NDJSON_TRANSPORT = {"pipe": "stdio", "unix": "unix", "tcp": "tcp", "tls": "tls", "sock": "socket"}


def _sniff(data: bytes) -> str | None:
    head = data.lstrip()[:64]
    if not head:
        return None
    if looks_like_http(head):
        return "http"
    if head[:1] in (b"{", b"[") or b'{"jsonrpc"' in data[:65536]:
        return "ndjson"
    return None


@dataclass
class _Stream:
    framing: str | None = None
    framer: LineFramer | HttpStream | None = None


@dataclass
class WireStats:
    chunks: int = 0
    messages: int = 0
    duplicates: int = 0
    truncated: int = 0
    lost_bytes: int = 0
    unpaired_responses: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class WirePipeline:
    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_CAP,
        capture_cap: int = DEFAULT_CAP,
        payload_cap: int | None = None,
        ts_offset_ns: int = 0,
        comm_of: Callable[[int], str] | None = None,
        cmdline_of: Callable[[int], str] | None = None,
        previous_snapshots: Iterable[ToolSnapshot] = (),
    ) -> None:
        """max_message_bytes: bytes kept per message (beyond: truncated, id/method still read);
        capture_cap: the capture side's per-call limit (WireFamily.max_message_bytes);
        payload_cap: characters of redacted JSON kept in McpMessage.payload (default: max_message_bytes,
                     so a message captured whole is stored whole);
        ts_offset_ns: added to every header ts (monotonic → unix ns);
        comm_of / cmdline_of: pid → comm / command line (for sender_comm and server identity);
        previous_snapshots: tools/list snapshots of an earlier trace, to report drift against."""
        self.max_message_bytes = max_message_bytes
        self.payload_cap = payload_cap if payload_cap is not None else max_message_bytes
        self.ts_offset_ns = ts_offset_ns
        self.comm_of = comm_of
        self._reassembler = Reassembler(capture_cap)
        self._streams: dict[StreamKey, _Stream] = {}
        self._dedup = Deduplicator()
        self._corr = Correlator(cmdline_of)
        self._seq = 0
        self._comms: dict[int, str] = {}
        self._last_snapshots: dict[str, list[ToolSnapshot]] = {}
        for s in previous_snapshots:
            self._last_snapshots.setdefault(s.server, []).append(s)
        self._tool_calls_read = 0
        self._tool_lists_read = 0
        self._snapshots: list[ToolSnapshot] = []
        self.drifts: list[Drift] = []
        self.stats = WireStats()

    # --- input ---------------------------------------------------------------------------
    def feed(self, header: Any, data: bytes) -> list[McpMessage]:
        """One capture chunk: a PAYLOAD_DTYPE header (np.void or dict) and its data bytes."""
        self.stats.chunks += 1
        chunk = Chunk.of(header)
        if self.ts_offset_ns:
            chunk = Chunk(chunk.ts_ns + self.ts_offset_ns, *(getattr(chunk, f) for f in
                          ("conn", "offset", "pid", "tid", "fd", "len", "total", "kind", "flags")))
        out: list[McpMessage] = []
        for piece in self._reassembler.feed(chunk, bytes(data)):
            out += self._piece(piece)
        return out

    def link_pipes(self, a_inode: int, b_inode: int) -> None:
        """Declare two pipes one stdio connection (a server's stdin and stdout), e.g. from
        /proc/PID/fd of a spawned server, when neither end's traffic makes it evident."""
        self._corr.link_pipes(f"pipe:{a_inode}", f"pipe:{b_inode}")

    def flush(self) -> list[McpMessage]:
        """End of capture: complete calls still in pieces and messages still in framers."""
        out: list[McpMessage] = []
        for piece in self._reassembler.flush():
            out += self._piece(piece)
        for key, stream in self._streams.items():
            if stream.framer is not None:
                out += self._frames(key, stream, stream.framer.flush())
        return out

    # --- stages --------------------------------------------------------------------------
    def _piece(self, piece: Piece) -> list[McpMessage]:
        stream = self._streams.get(piece.key)
        if stream is None:
            stream = self._streams[piece.key] = _Stream()
        out: list[McpMessage] = []
        if piece.gap:
            self.stats.lost_bytes += piece.gap
            if stream.framer is not None:
                out += self._frames(piece.key, stream, stream.framer.gap(piece.gap), piece.tid)
        if not piece.data:
            return out
        if stream.framing is None:
            stream.framing = _sniff(piece.data)
            if stream.framing is None:
                return out  # not MCP so far: try again at the next call's start
            stream.framer = HttpStream(self.max_message_bytes) if stream.framing == "http" else LineFramer(self.max_message_bytes)
        return out + self._frames(piece.key, stream, stream.framer.feed(piece.data, piece.ts_ns), piece.tid)

    def _frames(self, key: StreamKey, stream: _Stream, frames: list, tid: int = 0) -> list[McpMessage]:
        """`tid`: the thread whose call completed these frames (0: unknown, at flush)."""
        out: list[McpMessage] = []
        for item in frames:
            head, frame = item if isinstance(item, tuple) else (None, item)
            for rpc in decode(frame):
                msg = self._message(key, head, frame, rpc, tid)
                if msg is not None:
                    out.append(msg)
        return out

    def _message(self, key: StreamKey, head: HttpHead | None, frame: Frame, rpc: Rpc, tid: int) -> McpMessage | None:
        obs = Observation(key.pid, key.write, key.conn, key.transport, frame.ts_ns, head, tid)
        dkey = digest(rpc.raw)
        seen = self._dedup.match(key.conn, dkey, key.write, key.pid)
        if seen is not None:
            self._corr.note_endpoint(seen, obs)
            self._name(seen)
            self.stats.duplicates += 1
            return None
        clean = redact(rpc.body) if rpc.body is not None else None
        if clean is not None:
            payload = orjson.dumps(clean).decode()
        else:
            payload = redact_json_text(rpc.raw.decode("utf-8", "replace"))
        truncated = frame.truncated or len(payload) > self.payload_cap
        self._seq += 1
        msg = McpMessage(
            seq=self._seq,
            ts_ns=frame.ts_ns,
            connection=key.conn,
            transport=self._transport(key, head),
            kind=rpc.kind,
            size=len(rpc.raw) if rpc.batch else frame.size,
            payload=payload[: self.payload_cap],
            jsonrpc_id=rpc.id_json,
            method=rpc.method,
            tool_name=rpc.tool_name,
            truncated=truncated,
            error_code=rpc.error_code,
            error_message=rpc.error_message,
            batch=rpc.batch,
            http=head.summary() if head is not None else None,
        )
        if rpc.kind == "request":
            msg.body = clean
        self._dedup.add(key.conn, dkey, key.write, key.pid, msg)
        self._corr.note_endpoint(msg, obs)
        self._corr.observe(msg, rpc.body, obs)
        self._name(msg)
        self._scan_tool_lists()
        self.stats.messages += 1
        self.stats.truncated += truncated
        self.stats.by_kind[msg.kind] = self.stats.by_kind.get(msg.kind, 0) + 1
        self.stats.unpaired_responses = self._corr.unpaired_responses
        return msg

    @staticmethod
    def _transport(key: StreamKey, head: HttpHead | None) -> str:
        if head is not None:
            return "https" if key.transport == "tls" else "http"
        return _NDJSON_TRANSPORT.get(key.transport, key.transport)

    def _name(self, msg: McpMessage) -> None:
        if self.comm_of is None:
            return
        for pid, attr in ((msg.sender_pid, "sender_comm"), (msg.receiver_pid, "receiver_comm")):
            if pid and not getattr(msg, attr):
                if pid not in self._comms:
                    self._comms[pid] = self.comm_of(pid) or ""
                setattr(msg, attr, self._comms[pid])

    def _scan_tool_lists(self) -> None:
        lists = self._corr.tool_lists
        while self._tool_lists_read < len(lists):
            tl = lists[self._tool_lists_read]
            self._tool_lists_read += 1
            current = snapshot(tl.server, tl.tools, tl.ts_ns)
            previous = self._last_snapshots.get(tl.server)
            if previous is not None:
                self.drifts += drift(previous, current)
            if previous is None or {s.digest for s in previous} != {s.digest for s in current}:
                self._snapshots += current  # store a server's tool set when it is new or changed
            self._last_snapshots[tl.server] = current

    # --- results -------------------------------------------------------------------------
    @property
    def tool_calls(self) -> list[ToolCall]:
        return self._corr.tool_calls

    def drain_tool_calls(self) -> list[ToolCall]:
        """Answered tools/call pairs not handed out before."""
        calls = self._corr.tool_calls[self._tool_calls_read :]
        self._tool_calls_read = len(self._corr.tool_calls)
        return calls

    def drain_snapshots(self) -> list[ToolSnapshot]:
        """mcp_tool_snapshots rows-to-be: a server's tool set when first seen or changed."""
        out, self._snapshots = self._snapshots, []
        return out

    @property
    def sessions(self) -> list[SessionInfo]:
        return self._corr.sessions

    def pending_requests(self) -> list[McpMessage]:
        """Requests with no response (yet): a response ten minutes later still pairs."""
        return list(dict.fromkeys(self._corr.pending.values()))
