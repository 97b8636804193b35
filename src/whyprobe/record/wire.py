"""The session side of MCP capture: wire payloads through the WirePipeline into the store.

`WireRecorder` is a probe family for `TraceSession`: it attaches the wire
family (syscall tracepoints + OpenSSL uprobes), feeds every drained payload
record to a `WirePipeline`, hands each message to live observers (console
view) as soon as it is decoded, and writes `mcp_messages`, `tool_calls`,
`mcp_tool_snapshots` rows and JSONL lines once a message has *settled*: a
request is reported when the first end is seen, but its other end (the
receiver's read, seen a moment later) completes the row, so rows wait
SETTLE_S or until the end of the capture.

Ids continue after those already in the database, so repeated captures into
one `--out` file never collide. Processes enrolled later (children found by
fork tracking, or auto-detected by the kernel's sniffing) and files mapped
later (an exec into node, a dlopen'd libssl) get their OpenSSL probed at the
next tick.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import IO, Callable, Iterable

import numpy as np

from whyprobe.kernel.loader import ProbeSet
from whyprobe.kernel.ring import PayloadBatch
from whyprobe.mcpwire.message import McpMessage, ToolCall
from whyprobe.mcpwire.pipeline import WirePipeline
from whyprobe.mcpwire.reassembly import WIRE_KINDS
from whyprobe.mcpwire.toolscan import Drift, ToolSnapshot
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.wire import WireFamily
from whyprobe.events import PL_SNIFFED

log = logging.getLogger(__name__)

SETTLE_S = 2.0
MESSAGE_COLUMNS = (
    "id", "timestamp", "connection", "transport", "direction", "sender_pid", "receiver_pid", "sender_comm",
    "jsonrpc_id", "method", "kind", "tool_name", "size", "truncated", "latency_ns", "request_id", "session_id", "payload",
)
CALL_COLUMNS = ("id", "request_msg", "server_pid", "tool_name", "started_at", "ended_at", "duration", "is_error")
SNAPSHOT_COLUMNS = ("timestamp", "server", "tool_name", "description", "input_schema", "digest", "flags")


def _proc_text(pid: int, name: str) -> str:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    return " ".join(a.decode("utf-8", "replace") for a in raw.strip(b"\n").split(b"\0") if a)


def existing_state(path: Path) -> tuple[int, int, list[ToolSnapshot]]:
    """(max mcp_messages.id, max tool_calls.id, latest tools/list snapshot per server) of an existing trace."""
    if not path.is_file():
        return 0, 0, []
    from whyprobe.store.reader import connect_readonly

    conn = connect_readonly(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        msg = conn.execute("SELECT COALESCE(MAX(id), 0) FROM mcp_messages").fetchone()[0] if "mcp_messages" in tables else 0
        call = conn.execute("SELECT COALESCE(MAX(id), 0) FROM tool_calls").fetchone()[0] if "tool_calls" in tables else 0
        snaps = load_snapshots(conn) if "mcp_tool_snapshots" in tables else []
    finally:
        conn.close()
    return int(msg), int(call), snaps


def load_snapshots(conn: sqlite3.Connection) -> list[ToolSnapshot]:
    """The newest tools/list snapshot of each server (one snapshot = the rows sharing its timestamp)."""
    conn.row_factory = sqlite3.Row
    rows = conn.execute(
        "SELECT s.* FROM mcp_tool_snapshots s JOIN (SELECT server, MAX(timestamp) AS ts FROM mcp_tool_snapshots GROUP BY server) l "
        "ON s.server = l.server AND s.timestamp = l.ts ORDER BY s.id"
    ).fetchall()
    conn.row_factory = None
    return [ToolSnapshot.from_row(r) for r in rows]


class WireRecorder:
    """A probe family for TraceSession: MCP messages decoded live, stored once settled."""

    name = "wire"

    def __init__(
        self,
        *,
        max_message_bytes: int = 1 << 20,
        sniff: bool = False,
        tls: bool = True,
        store: bool = True,
        jsonl: IO[str] | None = None,
        on_message: Callable[[McpMessage], None] | None = None,
        previous_snapshots: Iterable[ToolSnapshot] = (),
        id_base: int = 0,
        call_base: int = 0,
        ignore_pids: Iterable[int] = (),
    ) -> None:
        self.family = WireFamily(max_message_bytes=max_message_bytes, sniff=sniff, tls=tls)
        self.store = store
        self.jsonl = jsonl
        self.on_message = on_message
        self.id_base = id_base
        self.call_base = call_base
        self.ignore_pids = set(ignore_pids)
        self.pipeline: WirePipeline | None = None
        self._max = max_message_bytes
        self._previous = list(previous_snapshots)
        self._writer_of: Callable[[], object] = lambda: None
        self._lock = threading.Lock()
        self._unsettled: list[tuple[float, McpMessage]] = []
        self._calls: list[ToolCall] = []
        self.messages_written = 0
        self.calls: list[tuple[int, ToolCall]] = []  # (tool_calls.id, call) in order
        self.sniffed: set[int] = set()
        self.snapshots: list[ToolSnapshot] = []  # every tools/list snapshot stored (new or changed)
        self._probes: ProbeSet | None = None

    def bind(self, writer_of: Callable[[], object]) -> None:
        """Where rows go: a callable returning the session's Writer (created when the session starts)."""
        self._writer_of = writer_of

    # ---- ProbeFamily ---------------------------------------------------------------

    def attach(self, probes: ProbeSet, targets: TargetSpec) -> list[str]:
        self._probes = probes
        self.pipeline = WirePipeline(
            max_message_bytes=self._max,
            capture_cap=self._max,
            ts_offset_ns=probes.clock_offset_ns,
            comm_of=lambda pid: _proc_text(pid, "comm"),
            cmdline_of=lambda pid: _proc_text(pid, "cmdline"),
            previous_snapshots=self._previous,
        )
        return self.family.attach(probes, targets)

    def on_batch(self, records: object) -> None:
        return None

    def on_payloads(self, payloads: PayloadBatch) -> None:
        """Reader thread: decode, tell observers at once, keep rows until they settle."""
        now = time.monotonic()
        out: list[McpMessage] = []
        # Paths and argv of the host families share the ring: leave them out in one numpy call.
        payloads = payloads.select(np.isin(payloads.hdr["kind"], WIRE_KINDS))
        with self._lock:
            for hdr, data in payloads:
                if int(hdr["kind"]) not in WIRE_KINDS:
                    continue
                pid = int(hdr["pid"])
                if pid in self.ignore_pids:
                    continue
                if int(hdr["flags"]) & PL_SNIFFED:
                    self.sniffed.add(pid)
                out += self.pipeline.feed(hdr, data)
            self._unsettled += [(now, m) for m in out]
        self._tell(out)
        self._settle(now - SETTLE_S)

    def tick(self, pids: list[int]) -> list[str]:
        """Caller's thread: probe OpenSSL in files the processes mapped since (new children, an exec
        into node, a dlopen'd libssl), write settled rows."""
        if self.ignore_pids and self._probes is not None:
            for pid in self.ignore_pids & self.sniffed:
                self._probes.remove_target(pid)  # our own output must never feed the capture
        warnings = self.family.tick(sorted({*pids, *self.sniffed} - self.ignore_pids))
        self._settle(time.monotonic() - SETTLE_S)
        return warnings

    def finish(self, probes: ProbeSet, writer: object) -> None:
        with self._lock:
            rest = self.pipeline.flush()
            self._unsettled += [(0.0, m) for m in rest]
        self._tell(rest)
        self._settle(float("inf"), writer)

    def flags(self) -> dict:
        stats = self.pipeline.stats if self.pipeline is not None else None
        if stats is None:
            return {}
        return {"mcp": {"messages": stats.messages, "truncated": stats.truncated, "lost_bytes": stats.lost_bytes,
                        "unpaired_responses": stats.unpaired_responses, "tls_libraries": self.family.tls_libraries}}

    # ---- results -------------------------------------------------------------------

    @property
    def drifts(self) -> list[Drift]:
        return self.pipeline.drifts if self.pipeline is not None else []

    def row(self, msg: McpMessage) -> tuple:
        r = msg.to_row()
        r["id"] += self.id_base
        if r["request_id"] is not None:
            r["request_id"] += self.id_base
        return tuple(r[c] for c in MESSAGE_COLUMNS)

    def json_line(self, msg: McpMessage) -> str:
        import orjson

        d = msg.to_dict()
        d["id"] += self.id_base
        if d.get("request_id") is not None:
            d["request_id"] += self.id_base
        return orjson.dumps(d).decode()

    # ---- internals -----------------------------------------------------------------

    def _tell(self, msgs: list[McpMessage]) -> None:
        if self.on_message is None:
            return
        for m in msgs:
            try:
                self.on_message(m)
            except OSError as exc:  # a broken console (closed pipe) must not stop the capture
                log.warning("message observer failed: %s", exc)

    def _settle(self, before: float, writer: object = None) -> None:
        with self._lock:  # reader thread (on_payloads) and caller's thread (tick, finish) both settle
            i = 0
            while i < len(self._unsettled) and self._unsettled[i][0] <= before:
                i += 1
            ready = [m for _, m in self._unsettled[:i]]
            del self._unsettled[:i]
            snapshots = self.pipeline.drain_snapshots()
            self.snapshots += snapshots
            self._calls += self.pipeline.drain_tool_calls()
            # A call is stored with its response row: both ends are known by then.
            settled = {m.seq for m in ready}
            done = [c for c in self._calls if c.response.seq in settled or before == float("inf")]
            self._calls = [c for c in self._calls if c.response.seq not in settled and before != float("inf")]
            if ready or snapshots or done:
                self._write(ready, snapshots, done, writer or self._writer_of())

    def _write(self, ready: list[McpMessage], snapshots: list[ToolSnapshot], done: list[ToolCall], writer: object) -> None:
        if self.jsonl is not None and ready:
            for m in ready:
                self.jsonl.write(self.json_line(m) + "\n")
            self.jsonl.flush()
        call_rows = []
        for c in done:
            cid = self.call_base + len(self.calls) + 1
            self.calls.append((cid, c))
            r = c.to_row()
            r.update(id=cid, request_msg=r["request_msg"] + self.id_base)
            call_rows.append(tuple(r[k] for k in CALL_COLUMNS))
        if not self.store or writer is None:
            return
        if ready:
            writer.put_rows("mcp_messages", MESSAGE_COLUMNS, [self.row(m) for m in ready])
            self.messages_written += len(ready)
        if call_rows:
            writer.put_rows("tool_calls", CALL_COLUMNS, call_rows)
        if snapshots:
            writer.put_rows("mcp_tool_snapshots", SNAPSHOT_COLUMNS, [tuple(s.to_row()[k] for k in SNAPSHOT_COLUMNS) for s in snapshots])
