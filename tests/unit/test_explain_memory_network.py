"""Memory stalls and retransmits on synthetic traces: what each turns into, and what it must not claim."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from explain_synth import ENGINE_PID, ENGINE_TID, MS, blocked, ev, launch_loop, write_db  # noqa: E402

from whyprobe.analyze.explain import explain
from whyprobe.events import F_FAULT_WAIT, F_SOCK_OWNER, Source
from whyprobe.store.reader import open_trace

PEER = "10.0.0.2:8080"


def _finding(tmp_path: Path, extra: list[dict], retransmits: list[tuple[int, int]] = ()) -> dict:
    events, spans = launch_loop(200, slow={20: 9 * MS, 60: 9 * MS, 100: 9 * MS, 140: 9 * MS})
    rows = events + [e(spans) for e in extra]
    db = write_db(tmp_path / "t.db", rows)
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO events(timestamp, pid, tid, source, op, duration, arg0, arg1, arg2, aux, ret_code, cpu, flags, detail) "
            "VALUES (?, ?, ?, ?, 1, 0, 1, 5000, 8080, 2, 0, -1, ?, ?)",
            [(spans[i][0] + 3 * MS, ENGINE_PID, ENGINE_TID, int(Source.TCP), flags, f"10.0.0.1:5000 -> {PEER} ESTABLISHED") for i, flags in retransmits],
        )
    conn.close()
    with open_trace(db) as t:
        doc = explain(t)
    return next(f for f in doc["findings"] if f["op"] == "cudaLaunchKernel")


def _cause(f: dict, kind: str) -> dict | None:
    return next((c for c in f["causes"] if c["kind"] == kind), None)


def test_reclaim_and_fault_waits_are_memory(tmp_path: Path) -> None:
    # GIVEN a 6 ms memcg reclaim inside slow launch 0, and an 8 ms blocked-in-page-fault interval inside slow launch 1
    f = _finding(tmp_path, [
        lambda s: ev(s[0][0] + MS, 6 * MS, source=int(Source.HOST), op=21, arg0=1200),
        lambda s: {**blocked(s[1][0] + MS, 8 * MS), "flags": F_FAULT_WAIT},
    ])
    memory = _cause(f, "memory")
    # THEN both are memory, counted by kind; the blocked fault wait is not left to off_cpu
    assert memory["slow_calls"] == 2
    assert memory["explained_ns"] == 6 * MS + 8 * MS
    assert memory["stalls"] == {"memcg_reclaim": 1, "page_fault_wait": 1}
    assert _cause(f, "off_cpu") is None


def test_owned_retransmit_turns_its_blocked_wait_into_network_with_the_peer(tmp_path: Path) -> None:
    # GIVEN 8 ms blocked waits inside slow launches 0 and 1, with a retransmit on the thread's own socket
    # in the first and an unowned one (another process's socket, seen in softirq) in the second
    f = _finding(
        tmp_path,
        [lambda s: blocked(s[0][0] + MS, 8 * MS), lambda s: blocked(s[1][0] + MS, 8 * MS)],
        retransmits=[(0, F_SOCK_OWNER), (1, 0)],
    )
    net, off = _cause(f, "network"), _cause(f, "off_cpu")
    assert net["slow_calls"] == 1 and net["explained_ns"] == 8 * MS
    assert net["peers"] == [{"peer": PEER, "retransmits": 1}]
    assert off["slow_calls"] == 1 and off["explained_ns"] == 8 * MS
    assert any(PEER in r for r in f["recommendations"])


def test_a_retransmit_outside_any_wait_claims_nothing(tmp_path: Path) -> None:
    # GIVEN an owned retransmit inside a slow launch whose thread never blocked
    f = _finding(tmp_path, [], retransmits=[(2, F_SOCK_OWNER)])
    assert _cause(f, "network") is None
