"""`whyprobe spy` output: a console line per MCP message (or per request/response pair), and a
JSONL writer. Payloads reaching here are already redacted by the wire pipeline."""

from __future__ import annotations

import datetime
from typing import IO

from rich.console import Console
from rich.text import Text

from whyprobe.mcpwire.message import C2S, S2C, McpMessage
from whyprobe.units import fmt_ns

KIND_STYLE = {"request": "cyan", "response": "green", "error": "bold red", "notification": "magenta"}
ARROW = {C2S: "→", S2C: "←"}


def fmt_latency(ns: int | None) -> str:
    return "" if ns is None else fmt_ns(ns)


def _clock(ts_ns: int) -> str:
    return datetime.datetime.fromtimestamp(ts_ns / 1e9).strftime("%H:%M:%S.%f")[:-3]


def _who(msg: McpMessage) -> str:
    def one(pid: int, comm: str) -> str:
        return f"{comm}[{pid}]" if comm else (str(pid) if pid else "?")

    return f"{one(msg.sender_pid, msg.sender_comm)}→{one(msg.receiver_pid, msg.receiver_comm)}"


def message_line(msg: McpMessage) -> Text:
    """One message: time, transport, who→who, arrow, kind, method/tool, id, latency, size, flags."""
    t = Text()
    t.append(_clock(msg.ts_ns), "dim")
    t.append(f" {msg.transport:<5} ")
    t.append(f"{_who(msg):<28} ", "dim")
    t.append(ARROW.get(msg.direction, "?") + " ")
    t.append(f"{msg.kind:<12} ", KIND_STYLE.get(msg.kind, ""))  # "notification" is 12 wide: keep a space after it
    t.append(msg.method or "", "bold")
    if msg.tool_name:
        t.append(f" {msg.tool_name}", "yellow")
    if msg.jsonrpc_id is not None:
        t.append(f" id={msg.jsonrpc_id}", "dim")
    if msg.latency_ns is not None:
        t.append(f" {fmt_latency(msg.latency_ns)}", "bold")
    if msg.kind == "error":
        t.append(f" {msg.error_code}: {msg.error_message}", "red")
    elif msg.tool_error:
        t.append(" tool error", "red")
    t.append(f" {msg.size} B", "dim")
    if msg.truncated:
        t.append(" [truncated]", "yellow")
    if msg.cancelled:
        t.append(" [cancelled]", "yellow")
    return t


def pair_line(request: McpMessage, response: McpMessage | None) -> Text:
    """A request with its outcome on one line; response None means it never came."""
    t = Text()
    t.append(_clock(request.ts_ns), "dim")
    t.append(f" {request.transport:<5} ")
    t.append(f"{_who(request):<28} ", "dim")
    t.append(f"{request.method or '':<14}", "bold")
    if request.tool_name:
        t.append(f" {request.tool_name}", "yellow")
    t.append(f" id={request.jsonrpc_id}", "dim")
    if response is None:
        t.append(" no response", "yellow")
    else:
        failed = response.kind == "error" or response.tool_error
        t.append(f" {fmt_latency(response.latency_ns)}", "bold")
        t.append(" error" if failed else " ok", "bold red" if failed else "green")
        if response.kind == "error":
            t.append(f" {response.error_code}: {response.error_message}", "red")
        t.append(f" {request.size}/{response.size} B", "dim")
    if request.cancelled:
        t.append(" [cancelled]", "yellow")
    return t


class SpyReporter:
    """Live console view. pairs=True prints a request when its response arrives (with latency);
    notifications and unanswered requests (at `finish`) still get their own line."""

    def __init__(self, console: Console, *, pairs: bool = False) -> None:
        self.console = console
        self.pairs = pairs
        self._waiting: dict[int, McpMessage] = {}

    def render(self, msg: McpMessage) -> None:
        if not self.pairs:
            self.console.print(message_line(msg), soft_wrap=True)
            return
        if msg.kind == "request":
            self._waiting[msg.seq] = msg
        elif msg.kind in ("response", "error") and msg.request is not None:
            self._waiting.pop(msg.request.seq, None)
            self.console.print(pair_line(msg.request, msg), soft_wrap=True)
        else:
            self.console.print(message_line(msg), soft_wrap=True)

    def finish(self) -> None:
        for req in self._waiting.values():
            self.console.print(pair_line(req, None), soft_wrap=True)
        self._waiting.clear()


class JsonlWriter:
    """--jsonl FILE: one JSON object per message (McpMessage.to_dict)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def render(self, msg: McpMessage) -> None:
        self.stream.write(msg.to_json() + "\n")

    def finish(self) -> None:
        self.stream.flush()
