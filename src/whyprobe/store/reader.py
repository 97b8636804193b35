"""Read-only access to whyprobe and Ingero databases.

Every reader opens the file read-only (`mode=ro` URI + `PRAGMA query_only`), so
analysis can never modify a trace. Ingero files lack some of our columns; the
loader fills them with neutral defaults and `TraceDB.flavor` says which it is.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from whyprobe.errors import StoreError
from whyprobe.events import EVENT_ROW_DTYPE
from whyprobe.store import fastsql

_DEFAULTS = {"arg2": "0", "aux": "0", "cpu": "-1", "flags": "0", "stack_hash": "0"}


class EventColumns:
    """Events as one int64 array per column, read like an EVENT_ROW_DTYPE array.

    `cols["tid"]` is a column; `cols[mask]` / `cols[indices]` is a selection that
    keeps only row indices and gathers a column when it is first read. Filtering a
    million wide records copies 120 bytes a row each time; this copies 8 bytes a row
    per column the caller actually reads. Columns that were not loaded read as their
    neutral default (cpu -1, everything else 0).
    """

    __slots__ = ("_base", "_rows", "_idx", "_cache")

    def __init__(self, base: dict[str, np.ndarray], rows: int, idx: np.ndarray | None = None) -> None:
        self._base, self._rows, self._idx, self._cache = base, rows, idx, {}

    def __len__(self) -> int:
        return self._rows if self._idx is None else len(self._idx)

    def __getitem__(self, key):
        if isinstance(key, str):
            col = self._cache.get(key)
            if col is None:
                if key not in EVENT_ROW_DTYPE.names:
                    raise KeyError(key)
                base = self._base.get(key)
                if base is None:
                    col = np.full(len(self), int(_DEFAULTS.get(key, "0")), np.int64)
                else:
                    col = base if self._idx is None else base[self._idx]
                self._cache[key] = col
            return col
        sel = np.asarray(key)
        if sel.dtype == bool:
            if sel.shape != (len(self),):
                raise IndexError(f"boolean index of shape {sel.shape} for {len(self)} rows")
            sel = np.flatnonzero(sel)
        return EventColumns(self._base, self._rows, sel if self._idx is None else self._idx[sel])

    def compact(self) -> "EventColumns":
        """The selected rows gathered into contiguous columns of their own (and the loaded
        buffer released once nothing else holds it): later selections gather faster."""
        return EventColumns({name: self[name] for name in self._base}, len(self))



@dataclass
class TraceDB:
    path: Path
    conn: sqlite3.Connection
    flavor: str  # "whyprobe" | "ingero"
    tables: frozenset[str]
    columns: dict[str, frozenset[str]] = field(default_factory=dict)

    def has(self, table: str, column: str | None = None) -> bool:
        if table not in self.tables:
            return False
        return column is None or column in self.columns.get(table, frozenset())

    def op_names(self) -> dict[tuple[int, int], str]:
        if not self.has("ops"):
            return {}
        return {(s, o): n for s, o, n in self.conn.execute("SELECT source_id, op_id, name FROM ops")}

    def source_names(self) -> dict[int, str]:
        if not self.has("sources"):
            return {}
        return dict(self.conn.execute("SELECT id, name FROM sources"))

    def load_events(self, where: str = "", params: tuple = ()) -> np.ndarray:
        """All events (optionally filtered by a SQL WHERE clause) as an EVENT_ROW_DTYPE array."""
        cols = []
        have = self.columns.get("events", frozenset())
        for name in EVENT_ROW_DTYPE.names:
            if name == "id":
                cols.append("rowid")
            elif name in have:
                cols.append(f"COALESCE({name}, 0)" if name not in ("cpu",) else f"COALESCE({name}, -1)")
            else:
                cols.append(_DEFAULTS.get(name, "0"))
        sql = f"SELECT {', '.join(cols)} FROM events" + (f" WHERE {where}" if where else "") + " ORDER BY timestamp"
        data = fastsql.select_i64(self.conn, sql, params, len(cols))
        if data is None:
            rows = self.conn.execute(sql, params).fetchall()
            data = np.array(rows, dtype=np.int64).reshape(len(rows), len(cols))
        return np.ascontiguousarray(data).view(EVENT_ROW_DTYPE).reshape(-1)

    def load_arrays(self, columns: tuple[str, ...], where: str = "", params: tuple = ()) -> EventColumns:
        """Only `columns` of the matching events, unordered, as an EventColumns (one int64 array
        per column, no copy into a record array): what makes loading a million rows fast."""
        have = self.columns.get("events", frozenset())
        wanted = [c for c in columns if c in have or c == "id"]
        # The C path reads NULL as 0, so only columns whose default is not 0 need COALESCE there.
        fast = ["rowid" if c == "id" else (f"COALESCE({c}, {_DEFAULTS[c]})" if _DEFAULTS.get(c, "0") != "0" else c) for c in wanted]
        tail = " FROM events" + (f" WHERE {where}" if where else "")
        data = fastsql.select_i64(self.conn, f"SELECT {', '.join(fast)}{tail}", params, len(wanted), copy=False)
        if data is None:
            exprs = ["rowid" if c == "id" else f"COALESCE({c}, {_DEFAULTS.get(c, '0')})" for c in wanted]
            rows = self.conn.execute(f"SELECT {', '.join(exprs)}{tail}", params).fetchall()
            data = np.array(rows, dtype=np.int64).reshape(len(rows), len(wanted))
        return EventColumns({name: data[:, i] for i, name in enumerate(wanted)}, len(data))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "TraceDB":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def trace_over(path: str | os.PathLike, conn: sqlite3.Connection) -> TraceDB:
    """A TraceDB over a connection someone else opened and filters (the MCP server's, whose
    temp views stand in for filtered tables): its tables, temp views included, and columns."""
    tables = frozenset(
        r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table','view') UNION SELECT name FROM temp.sqlite_master WHERE type = 'view'"
        )
    )
    columns = {t: frozenset(r[1] for r in conn.execute(f"PRAGMA table_info('{t}')")) for t in tables if t != "audit_log"}
    row = conn.execute("SELECT value FROM schema_info WHERE key = 'producer'").fetchone() if "schema_info" in tables else None
    return TraceDB(Path(path), conn, "whyprobe" if row and row[0] == "whyprobe" else "ingero", tables, columns)


def connect_readonly(path: str | os.PathLike) -> sqlite3.Connection:
    """A read-only connection; one clear StoreError for a missing or non-SQLite file."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"No such database: {p}")
    if p.is_dir():
        raise StoreError(f"Is a directory, not a database: {p}")
    try:
        conn = sqlite3.connect(f"file:{p.resolve()}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("PRAGMA query_only = ON")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"Not a readable SQLite database: {p} ({exc})") from None
    return conn


def open_trace(path: str | os.PathLike) -> TraceDB:
    """Open a whyprobe or Ingero trace read-only, or raise StoreError saying why not."""
    conn = connect_readonly(path)
    try:
        tables = frozenset(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"))
        if "events" not in tables:
            raise StoreError(f"Not a whyprobe or Ingero trace (no events table): {path}")
        columns = {t: frozenset(r[1] for r in conn.execute(f"PRAGMA table_info('{t}')")) for t in tables}
        producer = None
        if "schema_info" in tables:
            row = conn.execute("SELECT value FROM schema_info WHERE key = 'producer'").fetchone()
            producer = row[0] if row else None
        flavor = "whyprobe" if producer == "whyprobe" else "ingero"
        if flavor == "whyprobe":
            from whyprobe.store.schema import SCHEMA_VERSION

            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{path} was written by a newer whyprobe (schema {version}; this one reads up to {SCHEMA_VERSION})")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"Corrupt database: {path} ({exc})") from None
    except StoreError:
        conn.close()
        raise
    return TraceDB(Path(path), conn, flavor, tables, columns)
