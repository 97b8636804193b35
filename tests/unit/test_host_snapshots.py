"""system_snapshots rows from psutil, written through the real writer."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from whyprobe.record.snapshots import SnapshotThread
from whyprobe.store.writer import Writer


def test_snapshot_thread_writes_one_row_per_interval_plus_a_last_one(tmp_path: Path) -> None:
    # GIVEN a writer and a snapshot thread at 50 ms
    db = tmp_path / "s.db"
    with Writer(db) as writer:
        snaps = SnapshotThread(writer, interval_s=0.05).start()
        time.sleep(0.3)
        snaps.stop()
        writer.flush()
    # THEN rows are in time order with plausible values (no row is all zeros)
    rows = sqlite3.connect(db).execute("SELECT timestamp, cpu_pct, mem_pct, mem_avail, load_avg FROM system_snapshots ORDER BY id").fetchall()
    assert len(rows) >= 4
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert all(0.0 <= r[1] <= 100.0 and 0.0 < r[2] < 100.0 and r[3] > 0 and r[4] >= 0.0 for r in rows)


def test_stop_without_start_writes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    with Writer(db) as writer:
        SnapshotThread(writer).stop()
        writer.flush()
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM system_snapshots").fetchone() == (0,)
