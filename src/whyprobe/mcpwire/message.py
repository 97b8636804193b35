"""What the wire pipeline reports: one `McpMessage` per JSON-RPC message, `ToolCall` per answered
tools/call, `SessionInfo` per handshake."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

C2S = "client->server"
S2C = "server->client"
UNKNOWN = "unknown"


@dataclass(eq=False)
class McpMessage:
    seq: int  # 1, 2, ... in report order; the mcp_messages.id to store it under
    ts_ns: int  # first byte, at whichever end saw it first
    connection: str
    transport: str  # stdio | unix | tcp | http | https | tls
    kind: str  # request | response | error | notification
    size: int
    payload: str  # redacted JSON, at most payload_cap characters
    direction: str = UNKNOWN
    jsonrpc_id: str | None = None
    method: str | None = None
    tool_name: str | None = None
    truncated: bool = False
    sender_pid: int = 0
    receiver_pid: int = 0
    sender_comm: str = ""
    receiver_comm: str = ""
    send_ts_ns: int = 0  # the sender's write (0: sender not traced)
    recv_ts_ns: int = 0  # the receiver's read (0: receiver not traced)
    send_tid: int = 0  # the sender's thread that wrote the end of the message (0: unknown)
    recv_tid: int = 0  # the receiver's thread that read the end of the message (0: unknown)
    session_id: str | None = None
    latency_ns: int | None = None
    request: McpMessage | None = field(default=None, repr=False)  # responses, cancels, progress
    error_code: int | None = None
    error_message: str | None = None
    tool_error: bool = False  # a tools/call result with isError: true
    cancelled: bool = False  # requests: a notifications/cancelled named this one
    progress: int = 0  # requests: notifications/progress received
    batch: bool = False
    http: dict[str, Any] | None = None  # start line and redacted headers
    body: dict[str, Any] | None = field(default=None, repr=False)  # requests until answered: redacted params
    pending_keys: list[tuple] = field(default_factory=list, repr=False)

    def to_row(self) -> dict[str, Any]:
        """Columns of the mcp_messages table."""
        return {
            "id": self.seq,
            "timestamp": self.ts_ns,
            "connection": self.connection,
            "transport": self.transport,
            "direction": self.direction,
            "sender_pid": self.sender_pid,
            "receiver_pid": self.receiver_pid,
            "sender_comm": self.sender_comm,
            "jsonrpc_id": self.jsonrpc_id,
            "method": self.method,
            "kind": self.kind,
            "tool_name": self.tool_name,
            "size": self.size,
            "truncated": int(self.truncated),
            "latency_ns": self.latency_ns,
            "request_id": self.request.seq if self.request is not None else None,
            "session_id": self.session_id,
            "payload": self.payload,
        }

    def to_dict(self) -> dict[str, Any]:
        d = self.to_row()
        try:
            d["payload"] = orjson.loads(self.payload)
        except orjson.JSONDecodeError:
            pass  # a truncated payload stays text
        d.update(
            receiver_comm=self.receiver_comm,
            error_code=self.error_code,
            error_message=self.error_message,
            tool_error=self.tool_error,
            cancelled=self.cancelled,
            batch=self.batch,
        )
        if self.http:
            d["http"] = self.http
        return d

    def to_json(self) -> str:
        """One line for --jsonl."""
        return orjson.dumps(self.to_dict()).decode()


@dataclass(eq=False)
class ToolCall:
    """An answered tools/call. Times are the server's own (read of the request, write of the
    response) where the server was traced, else the client's."""

    request: McpMessage
    response: McpMessage

    @property
    def tool_name(self) -> str:
        return self.request.tool_name or ""

    @property
    def server_pid(self) -> int:
        return self.request.receiver_pid or self.response.sender_pid

    @property
    def started_at(self) -> int:
        return self.request.recv_ts_ns or self.request.ts_ns

    @property
    def handler_tid(self) -> int:
        """The server thread that wrote the response (0: unknown); a thread-per-request server's
        handler, while an event loop's or a writer thread's is shared by every call."""
        return self.response.send_tid if self.response.sender_pid == self.server_pid else 0

    @property
    def ended_at(self) -> int:
        return self.response.send_ts_ns or self.response.ts_ns

    @property
    def is_error(self) -> bool:
        return self.response.kind == "error" or self.response.tool_error

    def to_row(self) -> dict[str, Any]:
        """The tool_calls columns the wire knows; the footprint columns are filled elsewhere."""
        return {
            "request_msg": self.request.seq,
            "server_pid": self.server_pid,
            "tool_name": self.tool_name,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration": max(self.ended_at - self.started_at, 0),
            "is_error": int(self.is_error),
        }


@dataclass(eq=False)
class SessionInfo:
    """What an initialize (or server/discover) exchange said."""

    connection: str
    transport: str
    ts_ns: int
    method: str
    protocol_version: str | None = None
    client_info: dict[str, Any] | None = None
    server_info: dict[str, Any] | None = None
    client_capabilities: dict[str, Any] | None = None
    server_capabilities: dict[str, Any] | None = None
    client_pid: int = 0
    server_pid: int = 0
    session_id: str | None = None

    @property
    def server_name(self) -> str | None:
        return implementation_name(self.server_info)


def implementation_name(info: dict[str, Any] | None) -> str | None:
    if not isinstance(info, dict) or not info.get("name"):
        return None
    return f"{info['name']} {info['version']}" if info.get("version") else str(info["name"])
