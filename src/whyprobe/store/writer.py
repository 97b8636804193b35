"""The single SQLite writer: one thread, a bounded queue, one transaction per batch.

The ring drain calls `Writer.put_events` and must never wait on the disk, so
the queue is bounded and a full queue drops the batch, counting its rows in
`sessions.queue_drops` (the storage twin of a ring drop). Everything else
(`put_rows`, `update_session`, `flush`) is queued in order behind the events.

Each batch also upserts `event_aggregates` (per minute, source, op, pid), so
counts and duration sums stay exact after retention prunes raw events.

On a fresh file the secondary indexes of `events` (all but the timestamp
index, which retention uses) are built once in `close()` instead of per row:
that is what keeps ingest above 300 k rows/s here (bench/ingest_sqlite.py).
Readers of a live trace see correct results, just without those indexes.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from whyprobe.errors import StoreError
from whyprobe.events import EVENT_ROW_COLUMNS, EVENT_ROW_DTYPE, Details
from whyprobe.store import fastsql, schema
from whyprobe.store.hostfacts import host_facts
from whyprobe.store.rows import AGGREGATE_UPSERT, aggregate_rows

log = logging.getLogger(__name__)

_PRUNE_CHUNK = 50_000
_BATCH_ITEMS = 64  # queue items folded into one transaction
# Secondary indexes on events take ~4x the insert time when maintained row by
# row (random B-tree inserts); a fresh file gets them built once, at close.
_DEFERRED_INDEXES = ("idx_events_timestamp", "idx_events_source_op", "idx_events_tid_ts", "idx_events_pid")
_SQLITE_MAGIC = b"SQLite format 3\x00"

def _read_first(path: Path, size: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(size)


def _check_target(path: Path) -> None:
    """Refuse paths we cannot write and files that are not ours, before touching them."""
    if path.is_dir():
        raise StoreError(f"Cannot write database: {path} (it is a directory)")
    parent = path.parent
    if not parent.is_dir():
        raise StoreError(f"Cannot write database: {path} (no such directory: {parent})")
    if not path.exists() or path.stat().st_size == 0:
        if not os.access(parent, os.W_OK):
            raise StoreError(f"Cannot write database: {path} (permission denied on {parent})")
        return
    try:
        head = _read_first(path, len(_SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"Cannot write database: {path} ({exc.strerror})") from None
    if head != _SQLITE_MAGIC:
        raise StoreError(f"Not a whyprobe database, will not overwrite: {path}")
    try:
        conn = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"Cannot write database: {path} ({exc})") from None
    if app_id != schema.APPLICATION_ID:
        raise StoreError(
            f"Not a whyprobe database, will not overwrite: {path} "
            "(an Ingero trace? convert it with `whyprobe import-ingero`, or choose another --out)"
        )


class Writer:
    """Owns the database file while tracing; all writes go through its thread."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        session: dict | None = None,
        max_queue: int = 256,
        max_db_mb: float = 0,
        retention_hours: float = 0,
    ) -> None:
        self.path = Path(path)
        _check_target(self.path)
        try:
            conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"Cannot write database: {self.path} ({exc})") from None
        try:
            # Takes effect only on a new file: 64 KiB pages insert ~15 % more rows/s than
            # the 4 KiB default (bench/ingest_sqlite.py), and readers mostly scan.
            conn.execute("PRAGMA page_size = 65536")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA journal_size_limit = 67108864")
            schema.create(conn)
            self._columns = {
                t: [r[1] for r in conn.execute(f"PRAGMA table_info('{t}')")]
                for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            facts = host_facts()
            facts.update(session or {})
            self.session_id = self._insert_session(conn, facts)
            self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            self._event_rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
            self._deferred = self._event_rows == 0
            if self._deferred:
                for name in _DEFERRED_INDEXES:
                    conn.execute(f"DROP INDEX IF EXISTS {name}")
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"Cannot write database: {self.path} ({exc})") from None
        except StoreError:
            conn.close()
            raise
        self._conn = conn
        self.max_queue = max_queue
        self.max_db_bytes = int(max_db_mb * 2**20)
        self.retention_ns = int(retention_hours * 3600 * 1e9)
        self.queue_drops = 0
        self.events_written = 0
        self.pruned = 0
        # Seconds close() spent building the deferred indexes (bench/ingest.py reports ingest without them).
        self.index_build_s = 0.0
        self._newest_ts: int | None = None
        self._items: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._closed = False
        self._error: BaseException | None = None
        self._insert_event = self._event_sql(with_detail=False)
        self._insert_event_detail = self._event_sql(with_detail=True)
        self._thread = threading.Thread(target=self._run, name="whyprobe-writer", daemon=True)
        self._thread.start()

    # ---- producer side (any thread) -------------------------------------------------

    def put_events(self, rows: np.ndarray, details: Details | Sequence[str | None] | None = None) -> bool:
        """Queue a batch of EVENT_ROW_DTYPE rows without ever blocking.

        The writer keeps a reference to `rows` (no copy): don't reuse the buffer.
        Returns False (and counts the rows in `queue_drops`) when the queue is
        full, the writer failed, or it is closed.
        """
        if rows.dtype != EVENT_ROW_DTYPE:
            raise TypeError(f"put_events wants rows of EVENT_ROW_DTYPE, got {rows.dtype}")
        if details is not None and len(details) != len(rows):
            raise ValueError(f"{len(details)} details for {len(rows)} rows")
        if len(rows) == 0:
            return True
        if self._stopping or self._error is not None or len(self._items) >= self.max_queue:
            self.queue_drops += len(rows)
            return False
        self._items.append(("events", np.ascontiguousarray(rows), details))
        self._wake.set()
        return True

    def put_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, replace: bool = False) -> None:
        """Queue rows for any other table, in order with the events (never dropped).

        replace=True overwrites rows with the same key; otherwise an existing
        row with that key is kept and the new one ignored.
        """
        known = self._columns.get(table)
        if known is None:
            raise ValueError(f"no table {table!r} in the whyprobe schema")
        unknown = [c for c in columns if c not in known]
        if unknown:
            raise ValueError(f"table {table} has no column(s) {', '.join(unknown)}")
        self._check_open()
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        sql = f"{verb} INTO {table}({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        self._items.append(("sql", sql, list(rows)))
        self._wake.set()

    def update_session(self, **fields: Any) -> None:
        """Queue an update of this session's row (drop counters, stopped_at, ...)."""
        unknown = [k for k in fields if k not in self._columns["sessions"] or k == "id"]
        if unknown:
            raise ValueError(f"sessions has no column(s) {', '.join(unknown)}")
        self._check_open()
        values = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in fields.values()]
        sql = f"UPDATE sessions SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?"
        self._items.append(("sql", sql, [(*values, self.session_id)]))
        self._wake.set()

    def flush(self, timeout: float | None = None) -> None:
        """Return once everything queued before this call is committed."""
        self._check_open()
        done = threading.Event()
        self._items.append(("flush", done))
        self._wake.set()
        if not done.wait(timeout):
            raise StoreError(f"Writer did not flush within {timeout} s: {self.path}")
        self._raise_error()

    def close(self) -> None:
        """Drain the queue, commit, record stopped_at and drops, build indexes, checkpoint. Idempotent.

        Takes no lock the producers use, so it is safe to call from a signal
        handler's path; the writer thread notices the stop within 50 ms.
        """
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        self._thread.join()
        try:
            self._conn.execute(
                "UPDATE sessions SET stopped_at = ?, queue_drops = queue_drops + ? WHERE id = ?",
                (time.time_ns(), self.queue_drops, self.session_id),
            )
            if self._deferred:
                t0 = time.perf_counter()
                # Helper threads for the index sorts: ~12 % off the build here (2 cores), more on bigger hosts.
                self._conn.execute("PRAGMA threads = 4")
                self._conn.executescript(schema.TABLES)
                self.index_build_s = time.perf_counter() - t0
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            self._error = self._error or exc
        finally:
            self._conn.close()
        self._raise_error()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def error(self) -> BaseException | None:
        return self._error

    # ---- writer thread -------------------------------------------------------------

    def _run(self) -> None:  # the writer thread
        while True:
            if not self._items:
                if self._stopping:
                    return
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            batch = []
            while self._items and len(batch) < _BATCH_ITEMS:
                batch.append(self._items.popleft())
            if self._error is not None:
                self._release(batch)
                continue
            try:
                self._commit(batch)
                self._retain()
            # Any failure (disk full, I/O error, or a bug) must reach flush/close through _error:
            # this thread ending silently would leave producers waiting forever.
            except Exception as exc:
                log.error("writer failed on %s: %s", self.path, exc)
                self._error = exc
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            self._release(batch)

    def _release(self, batch: list) -> None:
        for item in batch:
            if item[0] == "flush":
                item[1].set()
            elif item[0] == "events" and self._error is not None:
                self.queue_drops += len(item[1])

    def _commit(self, batch: list) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        written = 0
        for item in batch:
            kind = item[0]
            if kind == "events":
                rows, details = item[1], item[2]
                matrix = rows.view(np.int64).reshape(-1, len(EVENT_ROW_COLUMNS))
                if details is None:
                    if not fastsql.insert_i64(conn, self._insert_event, matrix):
                        conn.executemany(self._insert_event, matrix.tolist())
                else:
                    if not isinstance(details, Details):
                        details = Details.from_strings(list(details))
                    if not fastsql.insert_i64_text(conn, self._insert_event_detail, matrix, details.text, details.offsets, details.lengths):
                        values = matrix.tolist()
                        for v, d in zip(values, details.tolist()):
                            v.append(d)
                        conn.executemany(self._insert_event_detail, values)
                conn.executemany(AGGREGATE_UPSERT, aggregate_rows(rows))
                newest = int(rows["timestamp"].max())
                self._newest_ts = newest if self._newest_ts is None else max(self._newest_ts, newest)
                written += len(rows)
            elif kind == "sql":
                conn.executemany(item[1], item[2])
        conn.execute("COMMIT")
        self.events_written += written
        self._event_rows += written

    def _retain(self) -> None:
        if self.retention_ns > 0 and self._newest_ts is not None:
            cutoff = self._newest_ts - self.retention_ns
            while self._prune("SELECT id FROM events WHERE timestamp < ? LIMIT ?", (cutoff, _PRUNE_CHUNK)) == _PRUNE_CHUNK:
                pass
        if self.max_db_bytes > 0:
            used = self._used_bytes()
            if used <= self.max_db_bytes:
                return
            target = int(self.max_db_bytes * 0.9)  # hysteresis: don't prune again on the next batch
            while used > target:
                per_row = max(used / max(self._event_rows, 1), 1.0)
                want = min(max(math.ceil((used - target) / per_row), 1000), _PRUNE_CHUNK)
                if self._prune("SELECT id FROM events ORDER BY timestamp LIMIT ?", (want,)) == 0:
                    break
                used = self._used_bytes()

    def _used_bytes(self) -> int:
        # Pages in use, wherever they live (main file or WAL); freed pages are reused, not counted.
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self._page_size

    def _prune(self, select_ids: str, params: tuple) -> int:
        conn = self._conn
        conn.execute("BEGIN")
        n = conn.execute(f"DELETE FROM events WHERE id IN ({select_ids})", params).rowcount
        if n:
            conn.execute("UPDATE sessions SET pruned = pruned + ? WHERE id = ?", (n, self.session_id))
        conn.execute("COMMIT")
        self.pruned += n
        self._event_rows -= n
        return n

    # ---- helpers -------------------------------------------------------------------

    def _event_sql(self, *, with_detail: bool) -> str:
        # id 0 binds as NULL, so SQLite assigns the rowid; rows bind as they lie in memory.
        cols = list(EVENT_ROW_COLUMNS) + (["detail"] if with_detail else [])
        marks = ", ".join(["NULLIF(?, 0)"] + ["?"] * (len(cols) - 1))
        return f"INSERT INTO events({', '.join(cols)}, session_id) VALUES ({marks}, {int(self.session_id)})"

    def _insert_session(self, conn: sqlite3.Connection, facts: dict[str, Any]) -> int:
        known = set(self._columns["sessions"]) - {"id"}
        unknown = sorted(set(facts) - known)
        if unknown:
            raise StoreError(f"Unknown session field(s): {', '.join(unknown)}")
        values = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in facts.values()]
        cur = conn.execute(
            f"INSERT INTO sessions({', '.join(facts)}) VALUES ({', '.join('?' * len(facts))})",
            values,
        )
        return int(cur.lastrowid)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"Writer is closed: {self.path}")
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise StoreError(f"Writing {self.path} failed: {self._error}")
