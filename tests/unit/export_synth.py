"""A small whyprobe database with every kind of thing the exports render, at known times."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from whyprobe.events import F_PREEMPTED, Source
from whyprobe.store import schema

T0 = 1_700_000_000_000_000_000  # unix ns

# id, ts offset, pid, tid, source, op, duration, arg0, arg1, arg2, aux, ret_code, flags
EVENTS = [
    (1, 0, 100, 100, Source.HOST, 5, 0, 0, 0, 0, 0, 0, 0),  # process_exec (instant)
    (2, 1_000, 100, 100, Source.CUDA, 3, 5_000, 0xABC, 64, 0, 0, 0, 0),  # cudaLaunchKernel
    (3, 2_000, 100, 100, Source.DRIVER, 1, 1_000, 0xABC, 0, 0, 0, 0, 0),  # cuLaunchKernel nested inside it
    (4, 10_000, 100, 100, Source.CUDA, 4, 50_000, 4096, 1, 0, 0, 0, 0),  # cudaMemcpy
    (5, 20_000, 100, 100, Source.HOST, 1, 30_000, 0, 200, 1, 0, 0, F_PREEMPTED),  # preempted by the hog
    (6, 30_000, 100, 101, Source.IO, 1, 400_000, 4096, 259, 8, 0, 0, 0),  # block read
    (7, 400_000, 100, 101, Source.IO, 2, 100_000, 8192, 259, 16, 0, 0, 0),  # block write overlapping the read's end
    (8, 100_000, 100, 100, Source.CUDA, 5, 2_000_000, 0, 0, 7, 0, 700, 0),  # cudaStreamSynchronize, error 700
    (9, 500_000, 100, 100, Source.HOST, 1, 1_000_000, 2, 0, 0, 101, 100, 0),  # blocked, woken by the loader
    (10, 3_500_000, 300, 300, Source.CUDA, 1, 100_000, 1 << 20, 0, 0, 0, 0, 0),  # cudaMalloc inside the tool call
]
PROCESSES = [(100, "trainer"), (200, "hog"), (300, "mcp-server")]
THREADS = [(100, 100, "trainer"), (101, 100, "loader"), (200, 200, "hog"), (300, 300, "mcp-server")]
TOOL_CALL = dict(id=1, request_msg=1, server_pid=300, tool_name="read_file", started_at=T0 + 3_000_000, ended_at=T0 + 5_000_000,
                 duration=2_000_000, is_error=0, cpu_user_ns=1_000, cpu_sys_ns=2_000, syscalls=12, files='["/etc/hosts"]')
FINDING_SUMMARY = "cudaStreamSynchronize tail: blocked on loader"


def make_db(path: Path, *, tool_calls: bool = True) -> Path:
    conn = sqlite3.connect(path)
    schema.create(conn)
    with conn:
        conn.executemany(
            "INSERT INTO events(id, timestamp, pid, tid, source, op, duration, arg0, arg1, arg2, aux, ret_code, flags)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(e[0], T0 + e[1], *e[2:4], int(e[4]), *e[5:]) for e in EVENTS],
        )
        conn.executemany("INSERT INTO process_names(pid, name) VALUES (?, ?)", PROCESSES)
        conn.executemany("INSERT INTO thread_names(tid, pid, comm) VALUES (?, ?, ?)", THREADS)
        conn.execute(
            "INSERT INTO findings(finding_key, created_at, window_start, window_end, kind, severity, source, op, tid, lost_ns, summary, body)"
            " VALUES ('k1', ?, ?, ?, 'tail', 'high', 'cuda', 'cudaStreamSynchronize', 100, 1000000, ?, '{}')",
            (T0 + 9_000_000, T0 + 100_000, T0 + 2_100_000, FINDING_SUMMARY),
        )
        if tool_calls:
            conn.execute(
                "INSERT INTO mcp_messages(id, timestamp, connection, transport, direction, jsonrpc_id, method, kind, tool_name, size, session_id, payload)"
                " VALUES (1, ?, 'c1', 'http', 'client->server', '7', 'tools/call', 'request', 'read_file', 100, 'sess-1', '{}')",
                (T0 + 2_990_000,),
            )
            columns = ", ".join(TOOL_CALL)
            conn.execute(f"INSERT INTO tool_calls({columns}) VALUES ({', '.join('?' * len(TOOL_CALL))})", tuple(TOOL_CALL.values()))
            conn.execute("INSERT INTO tool_call_events(call_id, event_id) VALUES (1, 10)")
    conn.close()
    return path
