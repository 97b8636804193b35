"""Read-only SQL for untrusted callers (MCP clients, `whyprobe query`).

Writes are refused by SQLite itself, in three independent layers: the file is
opened `mode=ro`, `PRAGMA query_only` is on, and an authorizer allows only
reads (no INSERT/UPDATE/DELETE/DDL, ATTACH/DETACH, pragma changes,
`load_extension`). Python's `execute` refuses multiple statements.

A pid filter is served by TEMP views that shadow the pid-bearing tables
(`events`, `process_names`, ...): temp objects are resolved before `main`,
and the authorizer refuses any read of a shadowed `main` table that does not
come through its own shadow view, so `main.events` cannot bypass the filter.
The small name tables are copied into temp tables instead. The temp schema lives in memory, so the trace file is never touched.

The audit log lives in a sidecar database (the trace may be read-only and must
stay byte-identical); it is attached read-only as schema `audit` before the
authorizer is installed and shown to queries as `audit_log`.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from whyprobe.errors import StoreError
from whyprobe.store.reader import connect_readonly

# Pragmas that only read; anything else (and any pragma given a value) is refused.
READ_ONLY_PRAGMAS = frozenset(
    {
        "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
        "foreign_key_list", "database_list", "collation_list", "function_list", "pragma_list",
        "compile_options", "user_version", "application_id", "schema_version", "data_version",
        "page_count", "page_size", "freelist_count", "encoding", "module_list",
    }
)
# Read-only pragmas whose argument names a table or index rather than setting a value.
NAME_ARG_PRAGMAS = frozenset({"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"})
# Functions that reach outside the database.
DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"})

# Tables carrying a process id, with the column(s) that name it.
PID_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": ("pid",),
    "process_names": ("pid",),
    "thread_names": ("pid",),
    "event_aggregates": ("pid",),
    "syscall_stats": ("pid",),
    "findings": ("pid",),
    "mcp_messages": ("sender_pid", "receiver_pid"),
    "tool_calls": ("server_pid",),
}
CGROUP_TABLES = ("events",)
# Small name tables are copied into temp instead of shadowed by a view: host_events joins them,
# and SQLite reports some reads inside such a join with no view context, which must stay denied.
COPIED_TABLES = frozenset({"process_names", "thread_names"})

MAX_ROWS_CEILING = 10_000


class QueryRefused(StoreError):
    """The statement was refused (a write, a denied pragma/function, or a limit hit)."""


@dataclass(frozen=True)
class SafeOptions:
    pid_filter: tuple[int, ...] = ()
    cgroup_filter: tuple[int, ...] = ()
    audit_path: Path | None = None
    max_rows: int = 1000
    time_limit_ms: int = 2000
    max_output_bytes: int = 256_000


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False
    truncated_reason: str = ""
    elapsed_ms: float = 0.0
    notes: list[str] = field(default_factory=list)


def _filter_clause(table: str, columns: frozenset[str], opts: SafeOptions) -> str | None:
    conds = []
    if opts.pid_filter:
        pids = ", ".join(str(int(p)) for p in opts.pid_filter)
        pid_cols = [c for c in PID_COLUMNS.get(table, ()) if c in columns]
        if pid_cols:
            conds.append("(" + " OR ".join(f"{c} IN ({pids})" for c in pid_cols) + ")")
    if opts.cgroup_filter and table in CGROUP_TABLES and "cgroup_id" in columns:
        conds.append(f"cgroup_id IN ({', '.join(str(int(c)) for c in opts.cgroup_filter)})")
    return " AND ".join(conds) or None


def _host_events_sql(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT sql FROM main.sqlite_master WHERE type = 'view' AND name = 'host_events'").fetchone()
    if not row:
        return None
    # Re-create the view in temp so that it reads the filtered temp `events`.
    return row[0].replace("CREATE VIEW IF NOT EXISTS", "CREATE TEMP VIEW", 1).replace("CREATE VIEW", "CREATE TEMP VIEW", 1)


class _Authorizer:
    """Allow reads only; a shadowed table is readable only through its shadow view."""

    def __init__(self, shadowed: frozenset[str]) -> None:
        self.shadowed = shadowed
        self.denied: str = ""

    def __call__(self, action: int, a1: str | None, a2: str | None, db: str | None, view: str | None) -> int:
        if action == sqlite3.SQLITE_SELECT or action == sqlite3.SQLITE_RECURSIVE:
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_READ:
            if db == "main" and a1 in self.shadowed and (view != a1 or a1 in COPIED_TABLES):
                return self._deny(f"table main.{a1} is filtered; read it as {a1}")
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            if (a2 or "").lower() in DENIED_FUNCTIONS:
                return self._deny(f"function {a2} is not allowed")
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_PRAGMA:
            name = (a1 or "").lower()
            if name in READ_ONLY_PRAGMAS and (a2 is None or name in NAME_ARG_PRAGMAS):
                return sqlite3.SQLITE_OK
            return self._deny(f"PRAGMA {a1} is not allowed here (read-only pragmas only, without a value)")
        if action == sqlite3.SQLITE_UPDATE and a1 == "sqlite_master":
            # Table-valued pragma functions (pragma_table_info) probe sqlite_master this way; IGNORE
            # keeps them working while any real update stays impossible (query_only, mode=ro).
            return sqlite3.SQLITE_IGNORE
        return self._deny("only SELECT statements are allowed (the database is read-only)")

    def _deny(self, why: str) -> int:
        self.denied = why
        return sqlite3.SQLITE_DENY


@dataclass
class SafeConnection:
    conn: sqlite3.Connection
    authorizer: _Authorizer
    filtered: frozenset[str]

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "SafeConnection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_safe(path: str | Path, opts: SafeOptions = SafeOptions()) -> SafeConnection:
    """A connection on which only filtered reads can run; raise StoreError for a bad file."""
    conn = connect_readonly(path)
    shadowed: set[str] = set()
    try:
        tables = {r[0]: r[1] for r in conn.execute("SELECT name, type FROM main.sqlite_master WHERE type IN ('table', 'view')")}
        conn.execute("PRAGMA query_only = OFF")  # temp objects only; main stays mode=ro
        if opts.audit_path is not None and Path(opts.audit_path).exists():
            conn.execute("ATTACH DATABASE ? AS audit", (f"file:{Path(opts.audit_path).resolve()}?mode=ro",))
            conn.execute("CREATE TEMP VIEW audit_log AS SELECT * FROM audit.audit_log")
        if opts.pid_filter or opts.cgroup_filter:
            for table, kind in tables.items():
                if kind != "table":
                    continue
                cols = frozenset(r[1] for r in conn.execute(f"PRAGMA main.table_info('{table}')"))
                clause = _filter_clause(table, cols, opts)
                if clause:
                    kind = "TABLE" if table in COPIED_TABLES else "VIEW"
                    conn.execute(f'CREATE TEMP {kind} "{table}" AS SELECT * FROM main."{table}" WHERE {clause}')
                    shadowed.add(table)
            if "host_events" in tables and "events" in shadowed:
                sql = _host_events_sql(conn)
                if sql:
                    conn.execute(sql)
                    shadowed.add("host_events")
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"cannot prepare read-only view of {path}: {exc}") from None
    if hasattr(conn, "enable_load_extension"):  # absent when Python was built without extension loading
        conn.enable_load_extension(False)
    auth = _Authorizer(frozenset(shadowed - {"host_events"}))
    conn.set_authorizer(auth)
    return SafeConnection(conn, auth, frozenset(shadowed))


READ_KEYWORDS = frozenset({"SELECT", "WITH", "VALUES", "PRAGMA", "EXPLAIN"})


def _first_keyword(sql: str) -> str:
    """The statement's first keyword, skipping comments (only used to word an error, never to allow)."""
    text = sql.lstrip()
    while text.startswith(("--", "/*")):
        end = text.find("\n") if text.startswith("--") else text.find("*/")
        text = "" if end < 0 else text[end + (1 if text.startswith("--") else 2):].lstrip()
    return text.split(None, 1)[0].upper().rstrip("(;") if text else ""


def _json_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    return v


def run_query(safe: SafeConnection, sql: str, params: Sequence[Any] = (), opts: SafeOptions = SafeOptions()) -> QueryResult:
    """Run one SELECT under the row cap, time limit and output byte cap."""
    max_rows = max(1, min(int(opts.max_rows), MAX_ROWS_CEILING))
    deadline = time.monotonic() + opts.time_limit_ms / 1000.0
    timed_out = False

    def progress() -> int:
        nonlocal timed_out
        if time.monotonic() > deadline:
            timed_out = True
            return 1
        return 0

    conn, auth = safe.conn, safe.authorizer
    auth.denied = ""
    conn.set_progress_handler(progress, 10_000)
    start = time.perf_counter()
    try:
        cur = conn.execute(sql, tuple(params))
        columns = [d[0] for d in cur.description or ()]
        if not columns:
            raise QueryRefused("only SELECT statements are allowed (the statement returned no rows)")
        rows: list[list[Any]] = []
        size = 0
        truncated, reason = False, ""
        for row in cur:
            if len(rows) >= max_rows:
                truncated, reason = True, f"row cap {max_rows} reached"
                break
            values = [_json_value(v) for v in row]
            size += sum(len(str(v)) + 3 for v in values)
            if size > opts.max_output_bytes:
                truncated, reason = True, f"output cap {opts.max_output_bytes} bytes reached"
                break
            rows.append(values)
        cur.close()
    except QueryRefused:
        raise
    except (sqlite3.Warning, sqlite3.ProgrammingError) as exc:  # e.g. more than one statement
        raise QueryRefused(f"refused: {exc}") from None
    except sqlite3.Error as exc:
        if timed_out:
            raise QueryRefused(f"query ran past the time limit of {opts.time_limit_ms} ms; add a WHERE or LIMIT") from None
        if auth.denied:
            raise QueryRefused(f"refused: {auth.denied}") from None
        text = str(exc)
        if "syntax error" in text or "incomplete input" in text:
            # Nothing ran: the statement did not parse, whatever its first word.
            raise StoreError(f"SQL syntax error: {text}") from None
        if _first_keyword(sql) not in READ_KEYWORDS or any(k in text for k in ("not authorized", "authorization denied", "readonly", "cannot modify")):
            raise QueryRefused("refused: only SELECT statements are allowed (the database is read-only)") from None
        raise StoreError(f"SQL error: {text}") from None
    finally:
        conn.set_progress_handler(None, 0)
    return QueryResult(columns, rows, truncated, reason, (time.perf_counter() - start) * 1000.0)
