"""Who is client, who is server, and which response answers which request.

Requests wait in `pending` under keys scoped to their connection, never by id alone and never
with a timeout:
* sockets (unix, TCP) and TLS: the connection plus the flow (which end sent it);
* stdio: the pipe the request went down; its response comes up the *other* pipe of the pair.
  Pipes pair when told (`link_pipes`), when one process reads exactly one MCP pipe and writes
  exactly one (every stdio server, and a client with one server), or when a response can only
  answer one pending request (same id, the response's reader wrote the request);
* HTTP: the Mcp-Session-Id where there is one (a server's request on the GET stream is answered
  by a POST on another TCP connection), else the TCP connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from whyprobe.mcpwire.http import HttpHead
from whyprobe.mcpwire.message import C2S, S2C, UNKNOWN, McpMessage, SessionInfo, ToolCall, implementation_name

CLIENT_METHODS = frozenset({
    "initialize", "server/discover", "tools/list", "tools/call", "resources/list", "resources/read",
    "resources/templates/list", "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get",
    "completion/complete", "logging/setLevel", "notifications/initialized", "notifications/roots/list_changed",
    "tasks/get", "tasks/list", "tasks/cancel", "tasks/result", "subscriptions/listen",
})
SERVER_METHODS = frozenset({
    "sampling/createMessage", "elicitation/create", "roots/list", "notifications/message",
    "notifications/tools/list_changed", "notifications/prompts/list_changed", "notifications/resources/list_changed",
    "notifications/resources/updated", "notifications/elicitation/complete",
})
HANDSHAKES = ("initialize", "server/discover")
_META_SERVER = "io.modelcontextprotocol/serverInfo"
_META_CLIENT = "io.modelcontextprotocol/clientInfo"
_META_VERSION = "io.modelcontextprotocol/protocolVersion"
_META_CLIENT_CAPS = "io.modelcontextprotocol/clientCapabilities"


def _flip(direction: str) -> str:
    return {C2S: S2C, S2C: C2S}.get(direction, UNKNOWN)


@dataclass
class Observation:
    """Where a message was seen: the process, whether it wrote or read it, and how."""

    pid: int
    write: bool
    conn: str
    transport: str  # pipe | unix | tcp | tls | sock (the stream's, not the framing's)
    ts_ns: int
    http: HttpHead | None = None
    tid: int = 0  # the thread whose read/write completed the message (0: unknown)


@dataclass
class ToolList:
    """A complete tools/list answer (all pages) from one server."""

    server: str
    ts_ns: int
    tools: list[dict[str, Any]]


class _Conn:
    __slots__ = ("anchor", "other", "roles", "writer", "reader")

    def __init__(self) -> None:
        self.anchor = 0  # sockets: the first pid seen; flow 0 = anchor sends
        self.other = 0
        self.roles: dict[int, str] = {}
        self.writer = 0  # pipes
        self.reader = 0


class Correlator:
    def __init__(self, cmdline_of: Any = None) -> None:
        self.cmdline_of = cmdline_of
        self.pending: dict[tuple, McpMessage] = {}
        self.tool_calls: list[ToolCall] = []
        self.sessions: list[SessionInfo] = []
        self.tool_lists: list[ToolList] = []
        self.unpaired_responses = 0
        self._conns: dict[str, _Conn] = {}
        self._parent: dict[str, str] = {}  # union-find over pipes
        self._pid_pipes: dict[int, tuple[set[str], set[str]]] = {}  # pid -> (read, written)
        self._session_of: dict[str, SessionInfo] = {}
        self._progress: dict[str, list[McpMessage]] = {}
        self._pages: dict[str, list[dict[str, Any]]] = {}

    # --- pipes -------------------------------------------------------------------------
    def _root(self, ref: str) -> str:
        while self._parent.get(ref, ref) != ref:
            ref = self._parent[ref]
        return ref

    def link_pipes(self, a: str, b: str) -> None:
        ra, rb = self._root(a), self._root(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)
            self._parent.setdefault(min(ra, rb), min(ra, rb))

    def _group(self, ref: str) -> list[str]:
        root = self._root(ref)
        return [p for p in self._parent if p != ref and self._root(p) == root]

    def _note_pipe_use(self, pid: int, ref: str, write: bool) -> None:
        reads, writes = self._pid_pipes.setdefault(pid, (set(), set()))
        (writes if write else reads).add(ref)
        if len(reads) == 1 and len(writes) == 1:
            (r,), (w,) = reads, writes
            if r != w:
                self.link_pipes(r, w)

    # --- flows and roles ---------------------------------------------------------------
    def _conn(self, ref: str) -> _Conn:
        c = self._conns.get(ref)
        if c is None:
            c = self._conns[ref] = _Conn()
        return c

    def _flow(self, obs: Observation) -> int:
        if obs.transport == "pipe":
            return 0
        c = self._conn(obs.conn)
        if not c.anchor:
            c.anchor = obs.pid
        if obs.pid == c.anchor:
            return 0 if obs.write else 1
        c.other = obs.pid
        return 1 if obs.write else 0

    def note_endpoint(self, msg: McpMessage, obs: Observation) -> None:
        """Record who is at this end of the message (first sighting or a de-duplicated second one)."""
        if obs.write:
            msg.sender_pid, msg.send_ts_ns, msg.send_tid = obs.pid, obs.ts_ns, obs.tid
        else:
            msg.receiver_pid, msg.recv_ts_ns, msg.recv_tid = obs.pid, obs.ts_ns, obs.tid
        if obs.transport == "pipe":
            c = self._conn(obs.conn)
            if obs.write:
                c.writer = obs.pid
            else:
                c.reader = obs.pid
            self._note_pipe_use(obs.pid, obs.conn, obs.write)
        else:
            self._flow(obs)

    def _role(self, obs: Observation, flow: int) -> str:
        if obs.http is not None:
            return C2S if obs.http.is_request else S2C
        role = self._conn(obs.conn).roles.get(flow)
        if role is None and obs.transport == "pipe":
            for other in self._group(obs.conn):
                theirs = self._conn(other).roles.get(0)
                if theirs:
                    return _flip(theirs)
        return role or UNKNOWN

    def _set_role(self, obs: Observation, flow: int, direction: str) -> None:
        if direction == UNKNOWN or obs.http is not None:
            return
        roles = self._conn(obs.conn).roles
        roles[flow] = direction
        if obs.transport != "pipe":
            roles[1 - flow] = _flip(direction)

    def _fill_pids(self, msg: McpMessage, obs: Observation, flow: int) -> None:
        if obs.transport == "pipe":
            c = self._conn(obs.conn)
            partners = [self._conn(p) for p in self._group(obs.conn)]
            msg.sender_pid = msg.sender_pid or c.writer or next((p.reader for p in partners if p.reader), 0)
            msg.receiver_pid = msg.receiver_pid or c.reader or next((p.writer for p in partners if p.writer), 0)
            return
        c = self._conn(obs.conn)
        sender, receiver = (c.anchor, c.other) if flow == 0 else (c.other, c.anchor)
        msg.sender_pid = msg.sender_pid or sender
        msg.receiver_pid = msg.receiver_pid or receiver

    # --- pending requests --------------------------------------------------------------
    def _keys(self, obs: Observation, flow: int, direction: str, rid: str) -> list[tuple]:
        """Keys a request travelling this way is filed under."""
        if obs.http is not None:
            keys: list[tuple] = [("c", obs.conn, direction, rid)]
            sid = obs.http.session_id
            return [("s", sid, direction, rid)] + keys if sid else keys
        if obs.transport == "pipe":
            return [("p", obs.conn, rid)]
        return [("c", obs.conn, flow, rid)]

    def _answer_keys(self, obs: Observation, flow: int, rid: str) -> list[tuple]:
        """Keys the request a response travelling this way answers may be under."""
        if obs.http is not None:
            want = _flip(C2S if obs.http.is_request else S2C)
            keys = [("c", obs.conn, want, rid)]
            sid = obs.http.session_id
            return [("s", sid, want, rid)] + keys if sid else keys
        if obs.transport == "pipe":
            return [("p", other, rid) for other in self._group(obs.conn)]
        return [("c", obs.conn, 1 - flow, rid)]

    def _file(self, req: McpMessage, keys: list[tuple]) -> None:
        req.pending_keys = keys
        for k in keys:
            self.pending[k] = req

    def _take(self, req: McpMessage) -> None:
        for k in req.pending_keys:
            if self.pending.get(k) is req:
                del self.pending[k]

    def _find_request(self, msg: McpMessage, obs: Observation, flow: int) -> McpMessage | None:
        rid = msg.jsonrpc_id
        for k in self._answer_keys(obs, flow, rid):
            req = self.pending.get(k)
            if req is not None:
                return req
        if obs.transport != "pipe" or self._group(obs.conn):
            return None
        # An unpaired pipe: the one pending request this can answer, if exactly one.
        fits = [
            (k, r) for k, r in self.pending.items()
            if k[0] == "p" and k[2] == rid and k[1] != obs.conn and not self._group(k[1])
            and (not msg.receiver_pid or r.sender_pid in (0, msg.receiver_pid))
            and (not msg.sender_pid or r.receiver_pid in (0, msg.sender_pid))
        ]
        if len(fits) != 1:
            return None
        self.link_pipes(fits[0][0][1], obs.conn)
        return fits[0][1]

    # --- messages ----------------------------------------------------------------------
    def observe(self, msg: McpMessage, body: dict[str, Any] | None, obs: Observation) -> None:
        """Direction, pids, pairing and what the message says about its session."""
        flow = 0 if obs.transport == "pipe" else self._flow(obs)
        if obs.http is not None:
            msg.session_id = obs.http.session_id
        direction = self._role(obs, flow)
        if direction == UNKNOWN and msg.method:
            direction = C2S if msg.method in CLIENT_METHODS else S2C if msg.method in SERVER_METHODS else UNKNOWN
        req = None
        if msg.kind in ("response", "error") and msg.jsonrpc_id is not None:
            req = self._find_request(msg, obs, flow)
            if req is None:
                self.unpaired_responses += 1
            elif direction == UNKNOWN:
                direction = _flip(req.direction)
        msg.direction = direction
        self._set_role(obs, flow, direction)
        self._fill_pids(msg, obs, flow)
        if req is not None:
            self._answer(req, msg, body, obs)
        elif msg.kind == "request" and msg.jsonrpc_id is not None:
            self._file(msg, self._keys(obs, flow, direction, msg.jsonrpc_id))
            token = _dig(body, "params", "_meta", "progressToken")
            if token is not None:
                self._progress.setdefault(orjson.dumps(token).decode(), []).append(msg)
        elif msg.kind == "notification" and body is not None:
            self._notification(msg, body, obs, flow)

    def _answer(self, req: McpMessage, msg: McpMessage, body: dict[str, Any] | None, obs: Observation) -> None:
        self._take(req)
        msg.request = req
        msg.method = req.method
        msg.tool_name = req.tool_name
        msg.latency_ns = msg.ts_ns - req.ts_ns
        if req.direction == UNKNOWN and msg.direction != UNKNOWN:
            req.direction = _flip(msg.direction)
        result = body.get("result") if body else None
        if isinstance(result, dict) and result.get("isError") is True:
            msg.tool_error = True
        if req.method == "tools/call":
            self.tool_calls.append(ToolCall(req, msg))
        if req.method in HANDSHAKES and msg.kind == "response":
            self._handshake(req, msg, result if isinstance(result, dict) else {}, obs)
        if req.method == "tools/list" and isinstance(result, dict):
            self._tools_page(req, msg, result)
        token = _dig(req.body, "params", "_meta", "progressToken")
        if token is not None:  # progress stops with the response
            key = orjson.dumps(token).decode()
            waiting = [r for r in self._progress.get(key, []) if r is not req]
            if waiting:
                self._progress[key] = waiting
            else:
                self._progress.pop(key, None)
        req.body = None

    def _handshake(self, req: McpMessage, msg: McpMessage, result: dict[str, Any], obs: Observation) -> None:
        params = _dig(req.body, "params") or {}
        meta = params.get("_meta") or {}
        rmeta = result.get("_meta") or {}
        versions = result.get("supportedVersions")
        info = SessionInfo(
            connection=req.connection,
            transport=req.transport,
            ts_ns=req.ts_ns,
            method=req.method or "",
            protocol_version=_first(
                result.get("protocolVersion"), versions[0] if isinstance(versions, list) and versions else None,
                params.get("protocolVersion"), meta.get(_META_VERSION),
            ),
            client_info=_first(params.get("clientInfo"), meta.get(_META_CLIENT)),
            server_info=_first(result.get("serverInfo"), rmeta.get(_META_SERVER)),
            client_capabilities=_first(params.get("capabilities"), meta.get(_META_CLIENT_CAPS)),
            server_capabilities=result.get("capabilities"),
            client_pid=req.sender_pid or msg.receiver_pid,
            server_pid=msg.sender_pid or req.receiver_pid,
            session_id=msg.session_id,
        )
        self.sessions.append(info)
        for ref in {req.connection, msg.connection, *self._group(msg.connection)}:
            self._session_of[ref] = info
        if msg.session_id:
            self._session_of["session:" + msg.session_id] = info

    def session_for(self, msg: McpMessage) -> SessionInfo | None:
        if msg.session_id and "session:" + msg.session_id in self._session_of:
            return self._session_of["session:" + msg.session_id]
        for ref in (msg.connection, *self._group(msg.connection)):
            if ref in self._session_of:
                return self._session_of[ref]
        return None

    def server_identity(self, msg: McpMessage, result: dict[str, Any]) -> str:
        """serverInfo name/version, else the server's command line, else its pid or connection."""
        name = implementation_name(_dig(result, "_meta", _META_SERVER))
        session = self.session_for(msg)
        if name is None and session is not None:
            name = session.server_name
        if name is None and msg.sender_pid and self.cmdline_of is not None:
            name = self.cmdline_of(msg.sender_pid) or None
        return name or (f"pid:{msg.sender_pid}" if msg.sender_pid else msg.connection)

    def _tools_page(self, req: McpMessage, msg: McpMessage, result: dict[str, Any]) -> None:
        server = self.server_identity(msg, result)
        tools = [t for t in result.get("tools") or [] if isinstance(t, dict)]
        first_page = not _dig(req.body, "params", "cursor")
        pages = tools if first_page else self._pages.get(server, []) + tools
        if result.get("nextCursor"):
            self._pages[server] = pages
            return
        self._pages.pop(server, None)
        self.tool_lists.append(ToolList(server, msg.ts_ns, pages))

    def _notification(self, msg: McpMessage, body: dict[str, Any], obs: Observation, flow: int) -> None:
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        if msg.method == "notifications/cancelled" and "requestId" in params:
            rid = orjson.dumps(params["requestId"]).decode()
            for k in self._keys(obs, flow, msg.direction, rid):
                req = self.pending.get(k)
                if req is not None:
                    req.cancelled = True
                    msg.request = req
                    break
        elif msg.method == "notifications/progress" and "progressToken" in params:
            token = orjson.dumps(params["progressToken"]).decode()
            for req in reversed(self._progress.get(token, [])):
                if self._same_scope(req, msg):
                    req.progress += 1
                    msg.request = req
                    break

    def _same_scope(self, a: McpMessage, b: McpMessage) -> bool:
        if a.session_id and a.session_id == b.session_id:
            return True
        return a.connection == b.connection or a.connection in self._group(b.connection)


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _dig(value: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(value, dict):
            return None
        value = value.get(p)
    return value
