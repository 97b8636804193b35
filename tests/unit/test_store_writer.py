"""The single SQLite writer: round trip, drops, close, refusals, retention."""

from __future__ import annotations

import shutil
import socket
import sqlite3
import threading
import time

import numpy as np
import pytest

from whyprobe.errors import StoreError
from whyprobe.clock import measure_offset_ns
from whyprobe.events import EVENT_DTYPE, EVENT_ROW_COLUMNS, EVENT_ROW_DTYPE
from whyprobe.store.rows import aggregate_rows, rows_from_records
from whyprobe.store.writer import Writer

MIN = 60_000_000_000


def make_rows(n: int, *, start_ns: int = 1_700_000_000 * 10**9, span_ns: int = 10**9, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.zeros(n, EVENT_ROW_DTYPE)
    rows["timestamp"] = start_ns + np.sort(rng.integers(0, span_ns, n))
    rows["pid"] = rng.integers(100, 104, n)
    rows["tid"] = rows["pid"] + 1
    rows["source"] = rng.choice([1, 3, 4], n)
    rows["op"] = rng.integers(1, 4, n)
    rows["duration"] = rng.integers(1, 10**6, n)
    rows["arg0"] = rng.integers(0, 4096, n)
    return rows


def fetch_events(path) -> np.ndarray:
    conn = sqlite3.connect(path)
    got = conn.execute(f"SELECT {', '.join(EVENT_ROW_COLUMNS)} FROM events ORDER BY id").fetchall()
    conn.close()
    return np.array(got, dtype=np.int64).view(EVENT_ROW_DTYPE).reshape(-1)


def one(path, sql: str, params: tuple = ()):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchone()
    finally:
        conn.close()


def test_rows_from_records_converts_clock_and_reinterprets_u64():
    # GIVEN ring records with u64 values above the int64 range
    rec = np.zeros(2, EVENT_DTYPE)
    rec["ts_ns"] = [1_000, 2_000]
    rec["duration_ns"] = [5, 7]
    rec["arg0"] = [2**64 - 1, 42]
    rec["arg1"] = [2**63, 1]
    rec["ret"] = [-22, 0]
    rec["pid"], rec["tid"], rec["cpu"] = [10, 11], [12, 13], [3, 4]
    rec["source"], rec["op"], rec["flags"] = [8, 1], [257, 3], [4, 0]
    # WHEN converted with a clock offset
    rows = rows_from_records(rec, 10**18)
    # THEN timestamps are wall clock and u64 bits survive as int64
    assert rows.dtype == EVENT_ROW_DTYPE
    assert rows["id"].tolist() == [0, 0]
    assert rows["timestamp"].tolist() == [10**18 + 1_000, 10**18 + 2_000]
    assert rows["arg0"].tolist() == [-1, 42]
    assert rows["arg1"].tolist() == [-(2**63), 1]
    assert rows["ret_code"].tolist() == [-22, 0]
    assert rows["op"].tolist() == [257, 3]
    assert rows["flags"].tolist() == [4, 0]
    assert rows["cpu"].tolist() == [3, 4]
    assert rows["stack_hash"].tolist() == [0, 0]


def test_round_trip_with_details_and_session(tmp_path):
    path = tmp_path / "t.db"
    rows = make_rows(1000)
    rows["arg0"][0] = -1  # a u64 all-ones pointer
    details = [f"/path/{i}" if i % 2 else None for i in range(1000)]
    with Writer(path, session={"probes": "cuda,host", "flags": {"stack": True}}) as w:
        assert w.put_events(rows[:500])
        assert w.put_events(rows[500:], details[500:])
        sid = w.session_id
    got = fetch_events(path)
    # Rows are stored in the layout they were queued in; SQLite numbered them (id 0 = unassigned).
    assert got["id"].tolist() == list(range(1, 1001))
    rows["id"] = got["id"]
    assert np.array_equal(got, rows)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT detail FROM events WHERE id = 502").fetchone()[0] == "/path/501"
    assert conn.execute("SELECT count(*) FROM events WHERE detail IS NULL").fetchone()[0] == 750
    assert conn.execute("SELECT count(DISTINCT session_id), min(session_id) FROM events").fetchone() == (1, sid)
    s = conn.execute("SELECT hostname, probes, flags, stopped_at > started_at, queue_drops FROM sessions WHERE id = ?", (sid,)).fetchone()
    assert s == (socket.gethostname(), "cuda,host", '{"stack": true}', 1, 0)
    # The deferred secondary indexes exist again after close.
    idx = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'")}
    assert {"idx_events_timestamp", "idx_events_source_op", "idx_events_tid_ts", "idx_events_pid"} <= idx
    conn.close()


def test_aggregates_match_numpy_grouping(tmp_path):
    rows = make_rows(5000, span_ns=3 * MIN, seed=3)
    path = tmp_path / "t.db"
    with Writer(path) as w:
        for part in np.array_split(rows, 7):
            w.put_events(part)
    conn = sqlite3.connect(path)
    got = {r[:4]: r[4:] for r in conn.execute("SELECT bucket, source, op, pid, count, stored, sum_dur, min_dur, max_dur, sum_arg0 FROM event_aggregates")}
    conn.close()
    bucket = rows["timestamp"] // MIN * MIN
    expected = {}
    for key in set(zip(bucket.tolist(), rows["source"].tolist(), rows["op"].tolist(), rows["pid"].tolist())):
        m = (bucket == key[0]) & (rows["source"] == key[1]) & (rows["op"] == key[2]) & (rows["pid"] == key[3])
        d = rows["duration"][m]
        expected[key] = (int(m.sum()), int(m.sum()), int(d.sum()), int(d.min()), int(d.max()), int(rows["arg0"][m].sum()))
    assert got == expected


def test_aggregate_sum_arg0_saturates_instead_of_wrapping():
    rows = make_rows(3)
    rows["source"], rows["op"], rows["pid"] = 1, 3, 7
    rows["timestamp"] = 0
    rows["arg0"] = 2**62 + 2**61
    (agg,) = aggregate_rows(rows)
    assert agg[:6] == (0, 1, 3, 7, "", 3) and agg[-1] == 2**63 - 1


def test_full_queue_counts_rows_and_never_blocks(tmp_path):
    # GIVEN a writer whose thread is stuck inside a commit and a queue of 2
    path = tmp_path / "t.db"
    w = Writer(path, max_queue=2)
    gate = threading.Event()
    commit = w._commit
    w._commit = lambda batch: (gate.wait(), commit(batch))
    rows = make_rows(100)
    assert w.put_events(rows[:10])
    while w._items:  # the thread has taken the first batch and is blocked
        time.sleep(0.001)
    # WHEN more batches arrive than the queue holds
    assert w.put_events(rows[10:30])
    assert w.put_events(rows[30:60])
    assert w.put_events(rows[60:100]) is False
    # THEN the dropped rows are counted, the rest is written
    assert w.queue_drops == 40
    gate.set()
    w.close()
    assert one(path, "SELECT count(*) FROM events") == (60,)
    assert one(path, "SELECT queue_drops FROM sessions WHERE id = ?", (w.session_id,)) == (40,)


def test_close_right_after_many_puts_loses_nothing(tmp_path):
    path = tmp_path / "t.db"
    rows = make_rows(100_000, span_ns=5 * MIN)
    w = Writer(path, max_queue=10_000)
    for part in np.array_split(rows, 400):
        assert w.put_events(part)
    w.put_rows("process_names", ["pid", "name"], [(100, "python3"), (101, "worker")])
    w.update_session(ring_drops=7, events_seen=100_007)
    w.close()
    w.close()  # idempotent
    assert one(path, "SELECT count(*), sum(duration) FROM events") == (100_000, int(rows["duration"].sum()))
    assert one(path, "SELECT sum(count) FROM event_aggregates") == (100_000,)
    assert one(path, "SELECT name FROM process_names WHERE pid = 101") == ("worker",)
    assert one(path, "SELECT ring_drops, events_seen FROM sessions") == (7, 100_007)
    assert w.put_events(rows[:5]) is False
    with pytest.raises(StoreError, match="Writer is closed"):
        w.flush()


def test_flush_commits_what_was_queued(tmp_path):
    path = tmp_path / "t.db"
    with Writer(path) as w:
        w.put_events(make_rows(321))
        w.flush()
        assert one(path, "SELECT count(*) FROM events") == (321,)
        assert w.events_written == 321


def test_put_rows_rejects_unknown_table_and_column(tmp_path):
    with Writer(tmp_path / "t.db") as w:
        with pytest.raises(ValueError, match="no table 'nope'"):
            w.put_rows("nope", ["a"], [(1,)])
        with pytest.raises(ValueError, match="has no column"):
            w.put_rows("process_names", ["pid", "evil; DROP TABLE events"], [(1, 2)])
        with pytest.raises(ValueError, match="sessions has no column"):
            w.update_session(bogus=1)


def test_unwritable_paths_fail_in_the_constructor(tmp_path):
    missing = tmp_path / "no" / "such" / "t.db"
    with pytest.raises(StoreError) as exc:
        Writer(missing)
    assert str(exc.value) == f"Cannot write database: {missing} (no such directory: {missing.parent})"
    with pytest.raises(StoreError) as exc:
        Writer(tmp_path)
    assert str(exc.value) == f"Cannot write database: {tmp_path} (it is a directory)"


def test_refuses_to_overwrite_foreign_files(tmp_path, shared_data):
    text = tmp_path / "notes.db"
    text.write_bytes(b"my precious notes\n" * 10)
    with pytest.raises(StoreError) as exc:
        Writer(text)
    assert str(exc.value) == f"Not a whyprobe database, will not overwrite: {text}"
    assert text.read_bytes() == b"my precious notes\n" * 10
    ingero = tmp_path / "ingero.db"
    shutil.copy(shared_data / "sample-gpu-node-02.db", ingero)
    before = ingero.read_bytes()
    with pytest.raises(StoreError, match="Not a whyprobe database, will not overwrite: .*import-ingero"):
        Writer(ingero)
    assert ingero.read_bytes() == before


def test_reopening_appends_a_session(tmp_path):
    path = tmp_path / "t.db"
    with Writer(path) as w1:
        w1.put_events(make_rows(10))
    with Writer(path, session={"node": "gpu-7"}) as w2:
        w2.put_events(make_rows(5))
    assert w2.session_id == w1.session_id + 1
    assert one(path, "SELECT count(*) FROM events WHERE session_id = ?", (w2.session_id,)) == (5,)
    assert one(path, "SELECT node FROM sessions WHERE id = ?", (w2.session_id,)) == ("gpu-7",)


def test_unknown_session_field_is_refused(tmp_path):
    with pytest.raises(StoreError, match="Unknown session field"):
        Writer(tmp_path / "t.db", session={"colour": "blue"})


def test_size_retention_prunes_oldest_and_keeps_exact_counts(tmp_path):
    # GIVEN far more events than fit in 4 MiB (an empty trace file is already ~2 MiB: a 64 KiB page per table and index)
    path = tmp_path / "t.db"
    rows = make_rows(120_000, span_ns=20 * MIN, seed=5)
    with Writer(path, max_db_mb=4) as w:
        for part in np.array_split(rows, 60):
            w.put_events(part)
        w.flush()
        pages, free, page = (one(path, f"PRAGMA {p}")[0] for p in ("page_count", "freelist_count", "page_size"))
    # THEN the oldest raw events are gone, counted, and the newest kept
    kept, oldest_kept = one(path, "SELECT count(*), min(timestamp) FROM events")
    assert 0 < kept < len(rows)
    assert w.pruned == len(rows) - kept
    assert one(path, "SELECT pruned FROM sessions") == (w.pruned,)
    assert one(path, "SELECT max(timestamp) FROM events") == (int(rows["timestamp"].max()),)
    assert int((rows["timestamp"] < oldest_kept).sum()) == w.pruned
    assert (pages - free) * page <= 4 * 2**20
    # AND the aggregates still count every event, per (source, op)
    conn = sqlite3.connect(path)
    agg = dict(((s, o), n) for s, o, n in conn.execute("SELECT source, op, sum(count) FROM event_aggregates GROUP BY source, op"))
    conn.close()
    keys, counts = np.unique(np.stack([rows["source"], rows["op"]], axis=1), axis=0, return_counts=True)
    assert agg == {(int(s), int(o)): int(n) for (s, o), n in zip(keys, counts)}


def test_age_retention_keeps_only_the_last_hours(tmp_path):
    path = tmp_path / "t.db"
    hour = 3600 * 10**9
    rows = make_rows(3000, span_ns=3 * hour, seed=9)
    with Writer(path, retention_hours=1) as w:
        w.put_events(rows[:1500])
        w.put_events(rows[1500:])
    newest = int(rows["timestamp"].max())
    expected_kept = int((rows["timestamp"] >= newest - hour).sum())
    assert one(path, "SELECT count(*), min(timestamp) >= ? FROM events", (newest - hour,)) == (expected_kept, 1)
    assert w.pruned == 3000 - expected_kept
    assert one(path, "SELECT sum(count) FROM event_aggregates") == (3000,)


def test_clock_offset_is_wall_minus_monotonic():
    expected = time.time_ns() - time.monotonic_ns()
    assert abs(measure_offset_ns() - expected) < 50_000_000
