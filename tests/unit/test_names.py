"""record/names.py: first records name threads and processes; an exec replaces both, from the kernel's
notice alone (the program may be gone before /proc or another record could say anything)."""

from __future__ import annotations

import numpy as np

from whyprobe.events import EVENT_DTYPE
from whyprobe.record.follow import Exec
from whyprobe.record.names import PROCESS_COLUMNS, Namer

GONE = 4_000_000  # no such pid: /proc has nothing to add


class FakeWriter:
    def __init__(self) -> None:
        self.items: list[tuple[str, bool, list]] = []

    def put_rows(self, table, columns, rows, *, replace=False) -> None:
        self.items.append((table, replace, [dict(zip(columns, r)) for r in rows]))


def _records(*rows: tuple[int, int, bytes]) -> np.ndarray:
    recs = np.zeros(len(rows), EVENT_DTYPE)
    for i, (pid, tid, comm) in enumerate(rows):
        recs[i]["pid"], recs[i]["tid"], recs[i]["comm"] = pid, tid, comm
    return recs


def test_exec_replaces_the_names_a_first_record_gave():
    w = FakeWriter()
    namer = Namer(w)
    # GIVEN a shim named by its first record
    namer.names(_records((GONE, GONE, b"bash")))
    assert [(t, r, [row["comm"] if t == "thread_names" else row["name"] for row in rows]) for t, r, rows in w.items] == [
        ("thread_names", False, ["bash"]), ("process_names", False, ["bash"])]
    # WHEN it execs python, which exits before any record of it is drained
    namer.exec_seen(Exec(GONE, GONE, 1, "python3", "/usr/bin/python3", ["python3", "-c", "pass"], 1_700_000_000_000_000_000))
    w.items.clear()
    namer.flush_execs()
    # THEN both rows are replaced with the notice's facts: comm, exe, cmdline, parent, start
    (t_table, t_replace, t_rows), (p_table, p_replace, p_rows) = w.items
    assert (t_table, t_replace, [(r["tid"], r["comm"]) for r in t_rows]) == ("thread_names", True, [(GONE, "python3")])
    row = p_rows[0]
    assert (p_table, p_replace, set(row) == set(PROCESS_COLUMNS)) == ("process_names", True, True)
    assert (row["name"], row["exe"], row["cmdline"], row["ppid"], row["started_at"]) == ("python3", "/usr/bin/python3", "python3 -c pass", 1, 1_700_000_000_000_000_000)


def test_an_exec_heard_of_before_late_records_is_not_undone_by_them():
    w = FakeWriter()
    namer = Namer(w)
    # GIVEN the exec notice arrives before the shim's last pre-exec records are drained
    namer.exec_seen(Exec(GONE, GONE, 1, "python3", "/usr/bin/python3", ["python3"], 0))
    namer.names(_records((GONE, GONE, b"bash"), (GONE, GONE + 1, b"worker")))
    # THEN the exec's rows are written first (replacing), and the stale comm is not written for that thread
    tables = [(t, r, [row.get("comm", row.get("name")) for row in rows]) for t, r, rows in w.items]
    assert tables == [("thread_names", True, ["python3"]), ("process_names", True, ["python3"]),
                      ("thread_names", False, ["worker"])]
