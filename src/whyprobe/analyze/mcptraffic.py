"""MCP traffic of a trace: tool calls with their footprints, sessions, messages by method.

Answers from the `tool_calls` and `mcp_messages` tables (`spy --out`, `footprint`);
each function returns None when the trace has no such rows, so callers can say so.
"""

from __future__ import annotations

from typing import Any

from whyprobe.store.reader import TraceDB

PAYLOAD_SHOWN = 2000
_CALL_COLS = ("id", "tool_name", "server_pid", "started_at", "duration", "is_error", "cpu_user_ns", "cpu_sys_ns", "syscalls", "syscall_ns",
              "files", "endpoints", "children", "cuda_calls")
_MESSAGE_COLS = ("id", "timestamp", "connection", "direction", "kind", "method", "tool_name", "jsonrpc_id", "size", "latency_ns", "payload")


def _absent(db: TraceDB, table: str) -> bool:
    return not db.has(table) or db.conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None


def tool_footprints(db: TraceDB, *, tool_name: str | None, limit: int) -> dict[str, Any] | None:
    """Per tool: calls, errors, median and max duration, syscalls, CPU; and the slowest calls."""
    if _absent(db, "tool_calls"):
        return None
    where, params = ("WHERE tool_name = ?", (tool_name,)) if tool_name else ("", ())
    tools = [
        dict(zip(("tool_name", "calls", "errors", "p50_ns", "max_ns", "total_ns", "syscalls", "cpu_ns"), r))
        for r in db.conn.execute(
            f"SELECT tool_name, COUNT(*), SUM(is_error), (SELECT duration FROM tool_calls t2 WHERE t2.tool_name = t.tool_name ORDER BY duration LIMIT 1 OFFSET (COUNT(*) - 1) / 2), "
            f"MAX(duration), SUM(duration), SUM(syscalls), SUM(cpu_user_ns + cpu_sys_ns) FROM tool_calls t {where} GROUP BY tool_name ORDER BY SUM(duration) DESC",
            params,
        )
    ]
    calls = [dict(zip(_CALL_COLS, r)) for r in db.conn.execute(f"SELECT {', '.join(_CALL_COLS)} FROM tool_calls {where} ORDER BY duration DESC LIMIT ?", (*params, limit))]
    total = sum(t["calls"] for t in tools)
    return {"tools": tools, "calls": calls, "omitted": total - len(calls)}


def mcp_sessions(db: TraceDB) -> list[dict[str, Any]] | None:
    """One row per captured connection: transport, first/last message, counts, client and server."""
    if _absent(db, "mcp_messages"):
        return None
    cols = ("connection", "transport", "first_ns", "last_ns", "messages", "requests", "errors", "client_pid", "server_pid", "client_comm")
    rows = db.conn.execute(
        "SELECT connection, MIN(transport), MIN(timestamp), MAX(timestamp), COUNT(*), SUM(kind = 'request'), SUM(kind = 'error'), "
        "MIN(CASE WHEN direction = 'client->server' THEN sender_pid END), MIN(CASE WHEN direction = 'client->server' THEN receiver_pid END), "
        "MIN(CASE WHEN direction = 'client->server' THEN sender_comm END) FROM mcp_messages GROUP BY connection ORDER BY MIN(timestamp)"
    ).fetchall()
    return [dict(zip(cols, r)) for r in rows]


def mcp_traffic(db: TraceDB, *, connection: str | None, method: str | None, tool_name: str | None, limit: int) -> dict[str, Any] | None:
    """Requests per (method, tool) with errors, latency and bytes; the first `limit` messages in time order."""
    if _absent(db, "mcp_messages"):
        return None
    conds, params = [], []
    for col, val in (("connection", connection), ("method", method), ("tool_name", tool_name)):
        if val is not None:
            conds.append(f"{col} = ?")
            params.append(val)
    where = ("WHERE " + " AND ".join(conds)) if conds else ""
    methods = [
        dict(zip(("method", "tool_name", "requests", "errors", "avg_latency_ns", "max_latency_ns", "bytes"), r))
        for r in db.conn.execute(
            "SELECT q.method, q.tool_name, COUNT(*), SUM(r.kind = 'error'), AVG(r.latency_ns), MAX(r.latency_ns), SUM(q.size) "
            "FROM mcp_messages q LEFT JOIN mcp_messages r ON r.request_id = q.id WHERE q.kind = 'request' "
            + (" AND " + " AND ".join("q." + c for c in conds) if conds else "")
            + " GROUP BY q.method, q.tool_name ORDER BY COUNT(*) DESC LIMIT 50",
            params,
        )
    ]
    total = db.conn.execute(f"SELECT COUNT(*) FROM mcp_messages {where}", params).fetchone()[0]
    messages = [dict(zip(_MESSAGE_COLS, r)) for r in db.conn.execute(
        f"SELECT {', '.join(_MESSAGE_COLS)} FROM mcp_messages {where} ORDER BY timestamp LIMIT ?", (*params, limit))]
    for m in messages:
        if m["payload"] and len(m["payload"]) > PAYLOAD_SHOWN:
            m["payload"] = m["payload"][:PAYLOAD_SHOWN] + f"... ({len(m['payload']) - PAYLOAD_SHOWN} more chars)"
    return {"methods": methods, "messages": messages, "total": total, "omitted": total - len(messages)}
