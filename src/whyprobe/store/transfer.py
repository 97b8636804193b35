"""Copy whole traces (whyprobe or Ingero) into a new whyprobe database.

`import-ingero` and `merge` are the same operation on one or many inputs:
each input is ATTACHed read-only and copied table by table with SQL (no rows
pass through Python). The output is built in a temporary file next to the
target and renamed into place only when complete, so a failure never leaves
a half-written database at the target path.

What is copied, per input:

* events: every column both schemas share; missing ones get our defaults;
  `node` = the row's own node, else the input's node; timestamps minus the
  input's clock skew; `session_id` renumbered (Ingero rows: the session whose
  time range holds the event).
* sources/ops: ours first; ids our registry doesn't know keep the input's name.
* stack_traces (deduplicated by hash), cgroup_metadata, system_snapshots.
* sessions (renumbered; Ingero's ingero_ver/flags go into our `flags` JSON).
* event_aggregates: the input's own (they count pruned/discarded events too),
  or computed from its events when it has none.
* Ingero `causal_chains` → `ingero_causal_chains` (reference only).
* findings, mcp_messages, mcp_tool_snapshots, tool_calls, tool_call_events and
  audit_log: ids moved past the output's, references (request_id,
  request_msg, call_id, event_id) remapped with them, times minus the skew.

With `per_node=True` (merge), the findings and MCP tables get a `node` column,
and process_names, thread_names and system_snapshots also go to `<table>_by_node` tables keyed by (node, pid|tid|timestamp); the
plain tables keep only rows whose key has one meaning across the fleet (a
pid whose name is the same on every node that has it), so the `host_events`
view never shows one node's comm on another node's event.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from whyprobe.errors import StoreError
from whyprobe.store import schema
from whyprobe.store.reader import open_trace
from whyprobe.store.rows import NS_PER_MINUTE

# (table, key columns) of the tables that get a node-qualified twin when merging.
BY_NODE = (("process_names", ("pid",)), ("thread_names", ("tid",)), ("system_snapshots", ("timestamp",)))
# Tables whose rows get a `node` column of their own when merging.
NODE_COLUMN = ("findings", "mcp_messages", "mcp_tool_snapshots", "tool_calls", "audit_log")

_CHAIN_COLUMNS = (
    "id", "node", "detected_at", "severity", "summary", "root_cause", "explanation",
    "recommendations", "cuda_op", "cuda_p99_us", "cuda_p50_us", "tail_ratio", "timeline",
)  # fmt: skip
_CHAINS_DDL = """
CREATE TABLE IF NOT EXISTS ingero_causal_chains (
    id TEXT NOT NULL, node TEXT NOT NULL DEFAULT '', detected_at INTEGER NOT NULL DEFAULT 0,
    severity TEXT NOT NULL DEFAULT '', summary TEXT NOT NULL DEFAULT '', root_cause TEXT NOT NULL DEFAULT '',
    explanation TEXT NOT NULL DEFAULT '', recommendations TEXT NOT NULL DEFAULT '', cuda_op TEXT NOT NULL DEFAULT '',
    cuda_p99_us INTEGER NOT NULL DEFAULT 0, cuda_p50_us INTEGER NOT NULL DEFAULT 0, tail_ratio REAL NOT NULL DEFAULT 0,
    timeline TEXT NOT NULL DEFAULT ''
)"""


@dataclass(frozen=True)
class Input:
    """One trace to copy, with the facts that decide how its rows are rewritten."""

    path: Path
    flavor: str  # whyprobe | ingero
    node: str  # for rows that carry no node of their own
    node_from: str  # events.node | sessions.node | schema_info | file name | none
    skew_ns: int  # subtracted from every timestamp
    skew_from: str  # sessions.clock_skew_ns | schema_info | override | none
    columns: dict[str, frozenset[str]]
    integer_ids: bool

    def has(self, table: str, column: str | None = None) -> bool:
        return table in self.columns and (column is None or column in self.columns[table])


def describe(path: str | os.PathLike, *, node_fallback: str | None, skew_ns: int | None = None) -> Input:
    """Open `path` read-only (StoreError if it is no trace) and resolve its node and clock skew.

    node_fallback is used when the file names no node; None means the file stem.
    """
    p = Path(path)
    with open_trace(p) as db:
        conn = db.conn
        info = dict(conn.execute("SELECT key, value FROM schema_info")) if db.has("schema_info") else {}
        session = {}
        if db.has("sessions"):
            row = conn.execute("SELECT * FROM sessions ORDER BY id LIMIT 1")
            values = row.fetchone()
            session = dict(zip((d[0] for d in row.description), values)) if values else {}
        node, node_from = "", "none"
        event_nodes: list[str] = []
        if db.has("events", "node"):
            event_nodes = [r[0] for r in conn.execute("SELECT DISTINCT node FROM events WHERE node IS NOT NULL AND node != '' LIMIT 2")]
        if session.get("node"):
            node, node_from = str(session["node"]), "sessions.node"
        elif info.get("node"):
            node, node_from = info["node"], "schema_info"
        elif len(event_nodes) == 1:
            node, node_from = event_nodes[0], "events.node"
        elif node_fallback is None:
            node, node_from = p.stem, "file name"
        else:
            node = node_fallback
        if skew_ns is not None:
            skew, skew_from = skew_ns, "override"
        elif session.get("clock_skew_ns"):
            skew, skew_from = int(session["clock_skew_ns"]), "sessions.clock_skew_ns"
        elif info.get("clock_skew_ns"):
            skew, skew_from = int(info["clock_skew_ns"]), "schema_info"
        else:
            skew, skew_from = 0, "none"
        integer_ids = conn.execute("SELECT count(*) FROM events WHERE typeof(id) != 'integer'").fetchone()[0] == 0
        return Input(p, db.flavor, node, node_from, skew, skew_from, dict(db.columns), integer_ids)


@contextmanager
def atomic_output(out: str | os.PathLike, *, force: bool) -> Iterator[sqlite3.Connection]:
    """A fresh whyprobe database in a temp file that replaces `out` only if the block succeeds."""
    out = Path(out)
    if out.is_dir():
        raise StoreError(f"Cannot write database: {out} (it is a directory)")
    if out.exists() and not force:
        raise StoreError(f"File exists, will not overwrite without --force: {out}")
    if not out.parent.is_dir():
        raise StoreError(f"Cannot write database: {out} (no such directory: {out.parent})")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise StoreError(f"Cannot write database: {out} ({exc.strerror})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    conn = None
    try:
        conn = sqlite3.connect(tmp, isolation_level=None, uri=True)  # uri: ATTACH ... mode=ro
        conn.execute("PRAGMA journal_mode = MEMORY")  # a temp file: crash safety comes from the rename
        schema.create(conn)
        yield conn
        conn.close()
        conn = None
        for stale in (Path(f"{out}-wal"), Path(f"{out}-shm"), Path(f"{out}-journal")):
            stale.unlink(missing_ok=True)  # an old WAL must never be replayed into the new file
        os.replace(tmp, out)
    except sqlite3.Error as exc:
        raise StoreError(f"Cannot write database: {out} ({exc})") from None
    finally:
        if conn is not None:
            conn.close()
        tmp.unlink(missing_ok=True)


def copy_inputs(conn: sqlite3.Connection, inputs: list[Input], *, per_node: bool) -> list[dict]:
    """Copy every input into `conn` (a fresh whyprobe DB); returns one summary dict per input."""
    if per_node:
        for table, key in BY_NODE:
            _create_by_node(conn, table, key)
        for table in NODE_COLUMN:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN node TEXT NOT NULL DEFAULT ''")
    summaries = []
    for inp in inputs:
        conn.execute("ATTACH DATABASE ? AS src", (f"file:{inp.path.resolve()}?mode=ro",))
        try:
            conn.execute("BEGIN")
            summaries.append(_copy_one(conn, inp, per_node=per_node, keep_ids=len(inputs) == 1 and inp.integer_ids))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.execute("DETACH DATABASE src")
    if per_node:
        conn.execute("BEGIN")
        for table, key in BY_NODE:
            _fill_unambiguous(conn, table, key)
        conn.execute("COMMIT")
    return summaries


def _copy_one(conn: sqlite3.Connection, inp: Input, *, per_node: bool, keep_ids: bool) -> dict:
    node_params = {"node": inp.node, "skew": inp.skew_ns}
    if inp.has("sources"):
        conn.execute("INSERT OR IGNORE INTO sources(id, name, description) SELECT id, name, COALESCE(description, '') FROM src.sources")
    if inp.has("ops"):
        conn.execute("INSERT OR IGNORE INTO ops(source_id, op_id, name, description) SELECT source_id, op_id, name, COALESCE(description, '') FROM src.ops")
    session_offset = conn.execute("SELECT COALESCE(max(id), 0) FROM sessions").fetchone()[0]
    sessions = _copy_sessions(conn, inp, session_offset)
    events_before = conn.execute("SELECT COALESCE(max(id), 0) FROM events").fetchone()[0]
    events = _copy_events(conn, inp, session_offset, sessions, keep_ids)
    if inp.has("stack_traces"):
        conn.execute(
            "INSERT OR IGNORE INTO stack_traces(hash, ips, frames) "
            "SELECT hash, COALESCE(ips, ''), COALESCE(frames, '') FROM src.stack_traces"
        )
    _copy_common(conn, inp, "cgroup_metadata", verb="INSERT OR IGNORE")
    for table, _key in BY_NODE:
        shift = ("timestamp",) if table == "system_snapshots" else ()
        if per_node:
            into = f"{table}_by_node"
            _copy_common(conn, inp, table, verb="INSERT OR REPLACE", into=into, exclude=("id",), shift=shift, node=True)
        else:
            _copy_common(conn, inp, table, verb="INSERT OR REPLACE", exclude=("id",), shift=shift)
    _copy_aggregates(conn, inp, events_before, node_params)
    mcp = _copy_mcp_and_findings(conn, inp, events_before, keep_ids, node=per_node)
    chains = 0
    for table in ("causal_chains", "ingero_causal_chains"):
        if inp.has(table):
            conn.execute(_CHAINS_DDL)
            cols = [c for c in _CHAIN_COLUMNS if c in inp.columns[table] and c != "node"]
            node_expr = "COALESCE(NULLIF(node, ''), :node)" if "node" in inp.columns[table] else ":node"
            chains += conn.execute(
                f"INSERT INTO ingero_causal_chains({', '.join(cols)}, node) SELECT {', '.join(cols)}, {node_expr} FROM src.{table}",
                node_params,
            ).rowcount
    return {
        "path": str(inp.path),
        "flavor": inp.flavor,
        "node": inp.node,
        "node_from": inp.node_from,
        "clock_skew_ns": inp.skew_ns,
        "skew_from": inp.skew_from,
        "events": events,
        "sessions": sessions,
        "causal_chains": chains,
        **mcp,
    }


def _ours(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA main.table_info('{table}')")]


def _copy_sessions(conn: sqlite3.Connection, inp: Input, offset: int) -> int:
    if not inp.has("sessions"):
        return 0
    have = inp.columns["sessions"]
    exprs = {"id": f"id + {offset}"}
    for col in _ours(conn, "sessions"):
        if col in ("id",) or col not in have:
            continue
        exprs[col] = col
    for col in ("started_at", "stopped_at"):
        if col in have:
            exprs[col] = f"CASE WHEN {col} = 0 THEN 0 ELSE {col} - :skew END"
    exprs["node"] = "COALESCE(NULLIF(node, ''), :node)" if "node" in have else ":node"
    exprs["clock_skew_ns"] = "0"  # after the correction, timestamps are on the reference clock
    if inp.flavor == "ingero":
        exprs["hostname"] = exprs["node"]
        parts = [f"'{c}', COALESCE({c}, '')" for c in ("ingero_ver", "flags") if c in have]
        exprs["flags"] = f"json_object({', '.join(parts)})" if parts else "''"
    sql = f"INSERT INTO sessions({', '.join(exprs)}) SELECT {', '.join(exprs.values())} FROM src.sessions ORDER BY id"
    return conn.execute(sql, {"node": inp.node, "skew": inp.skew_ns}).rowcount


def _copy_events(conn: sqlite3.Connection, inp: Input, session_offset: int, sessions: int, keep_ids: bool) -> int:
    have = inp.columns["events"]
    defaults = {"cpu": "-1", "detail": "NULL"}
    exprs = {}
    for col in _ours(conn, "events"):
        if col == "id":
            if keep_ids:
                exprs["id"] = "e.id"
            continue
        if col in ("timestamp", "node", "session_id"):
            continue
        if col in have:
            exprs[col] = f"e.{col}" if col == "detail" else f"COALESCE(e.{col}, {defaults.get(col, '0')})"
        elif col in defaults:
            exprs[col] = defaults[col]
    exprs["timestamp"] = "e.timestamp - :skew"
    exprs["node"] = "COALESCE(NULLIF(e.node, ''), :node)" if "node" in have else ":node"
    if inp.flavor == "whyprobe" and "session_id" in have:
        exprs["session_id"] = f"CASE WHEN e.session_id = 0 THEN 0 ELSE e.session_id + {session_offset} END"
    elif sessions:
        exprs["session_id"] = (
            "COALESCE((SELECT s.id FROM main.sessions s "
            f"WHERE s.id > {session_offset} AND s.id <= {session_offset + sessions} "
            "AND e.timestamp - :skew >= s.started_at AND (s.stopped_at = 0 OR e.timestamp - :skew <= s.stopped_at) "
            "ORDER BY s.started_at DESC LIMIT 1), 0)"
        )
    # (timestamp, id) order: rows get consecutive new ids in it, which _event_id_map relies on.
    sql = f"INSERT INTO events({', '.join(exprs)}) SELECT {', '.join(exprs.values())} FROM src.events e ORDER BY e.timestamp, e.id"
    return conn.execute(sql, {"node": inp.node, "skew": inp.skew_ns}).rowcount


def _copy_mcp_and_findings(conn: sqlite3.Connection, inp: Input, events_before: int, keep_ids: bool, *, node: bool) -> dict[str, int]:
    """Findings, MCP messages, tool snapshots, tool calls (with their event links) and audit rows,
    ids moved past what the output holds and every reference remapped with them."""
    off = {t: conn.execute(f"SELECT COALESCE(max(id), 0) FROM {t}").fetchone()[0] for t in ("mcp_messages", "mcp_tool_snapshots", "tool_calls")}
    remap = {
        "mcp_messages": {"id": f"id + {off['mcp_messages']}", "request_id": f"request_id + {off['mcp_messages']}"},
        "mcp_tool_snapshots": {"id": f"id + {off['mcp_tool_snapshots']}"},
        "tool_calls": {"id": f"id + {off['tool_calls']}", "request_msg": f"request_msg + {off['mcp_messages']}"},
    }
    shift = {"findings": ("created_at", "window_start", "window_end"), "mcp_messages": ("timestamp",),
             "mcp_tool_snapshots": ("timestamp",), "tool_calls": ("started_at", "ended_at"), "audit_log": ("timestamp",)}  # fmt: skip
    copied = {}
    for table in ("findings", "mcp_messages", "mcp_tool_snapshots", "tool_calls", "audit_log"):
        if not inp.has(table):
            continue
        cols = [c for c in _ours(conn, table) if c in inp.columns[table] and c != "node"]
        if table in ("findings", "audit_log"):
            cols.remove("id")  # AUTOINCREMENT: nothing refers to these ids
        exprs = [remap.get(table, {}).get(c) or (f"{c} - :skew" if c in shift[table] else c) for c in cols]
        if node:
            cols.append("node")
            exprs.append("COALESCE(NULLIF(node, ''), :node)" if inp.has(table, "node") else ":node")
        copied[table] = conn.execute(
            f"INSERT INTO {table}({', '.join(cols)}) SELECT {', '.join(exprs)} FROM src.{table} ORDER BY rowid",
            {"node": inp.node, "skew": inp.skew_ns},
        ).rowcount
    if inp.has("tool_call_events") and conn.execute("SELECT EXISTS (SELECT 1 FROM src.tool_call_events)").fetchone()[0]:
        event_id = "l.event_id" if keep_ids else "m.new"
        join = "" if keep_ids else " JOIN temp.event_ids m ON m.old = l.event_id"
        if not keep_ids:
            _event_id_map(conn, events_before)
        copied["tool_call_events"] = conn.execute(
            f"INSERT INTO tool_call_events(call_id, event_id) SELECT l.call_id + {off['tool_calls']}, {event_id} "
            f"FROM src.tool_call_events l{join}"
        ).rowcount
    return copied


def _event_id_map(conn: sqlite3.Connection, events_before: int) -> None:
    """temp.event_ids: the input's event id → the id its copy got (_copy_events numbers the
    copies consecutively after events_before, in (timestamp, id) order)."""
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS event_ids (old PRIMARY KEY, new INTEGER NOT NULL)")
    conn.execute("DELETE FROM temp.event_ids")
    conn.execute(
        f"INSERT INTO temp.event_ids(old, new) SELECT id, {int(events_before)} + row_number() OVER (ORDER BY timestamp, id) FROM src.events"
    )


def _copy_common(
    conn: sqlite3.Connection,
    inp: Input,
    table: str,
    *,
    verb: str,
    into: str | None = None,
    exclude: tuple[str, ...] = (),
    shift: tuple[str, ...] = (),
    node: bool = False,
) -> int:
    if not inp.has(table):
        return 0
    cols = [c for c in _ours(conn, table) if c in inp.columns[table] and c not in exclude]
    exprs = [f"{c} - :skew" if c in shift else c for c in cols]
    if node:
        cols.append("node")
        exprs.append(":node")
    sql = f"{verb} INTO {into or table}({', '.join(cols)}) SELECT {', '.join(exprs)} FROM src.{table}"
    return conn.execute(sql, {"node": inp.node, "skew": inp.skew_ns}).rowcount


def _copy_aggregates(conn: sqlite3.Connection, inp: Input, events_before: int, params: dict) -> None:
    upsert = (
        " ON CONFLICT(bucket, source, op, pid, node) DO UPDATE SET count = count + excluded.count,"
        " stored = stored + excluded.stored, sum_dur = sum_dur + excluded.sum_dur,"
        " min_dur = min(min_dur, excluded.min_dur), max_dur = max(max_dur, excluded.max_dur),"
        " sum_arg0 = sum_arg0 + excluded.sum_arg0"
    )
    cols = "bucket, source, op, pid, node, count, stored, sum_dur, min_dur, max_dur, sum_arg0"
    if inp.has("event_aggregates") and conn.execute("SELECT EXISTS (SELECT 1 FROM src.event_aggregates)").fetchone()[0]:
        node_expr = "COALESCE(NULLIF(node, ''), :node)" if inp.has("event_aggregates", "node") else ":node"
        sql = (
            f"INSERT INTO event_aggregates({cols}) SELECT (bucket - :skew) / {NS_PER_MINUTE} * {NS_PER_MINUTE}, "
            f"source, op, pid, {node_expr}, count, stored, sum_dur, min_dur, max_dur, sum_arg0 "
            "FROM src.event_aggregates WHERE true" + upsert
        )
    else:
        # total() is a float sum: arg0 holds pointers for some ops, and sum() would raise on overflow.
        sql = (
            f"INSERT INTO event_aggregates({cols}) SELECT timestamp / {NS_PER_MINUTE} * {NS_PER_MINUTE} AS b, "
            "source, op, pid, node, count(*), count(*), sum(duration), min(duration), max(duration), "
            f"CAST(total(arg0) AS INTEGER) FROM main.events WHERE id > {int(events_before)} "
            "GROUP BY b, source, op, pid, node" + upsert
        )
    conn.execute(sql, params)


def _create_by_node(conn: sqlite3.Connection, table: str, key: tuple[str, ...]) -> None:
    info = [r for r in conn.execute(f"PRAGMA main.table_info('{table}')") if r[1] != "id"]
    defs = ", ".join(f"{name} {ctype}" + (f" DEFAULT {dflt}" if dflt is not None else "") for _cid, name, ctype, _nn, dflt, _pk in info)
    conn.execute(f"CREATE TABLE IF NOT EXISTS {table}_by_node (node TEXT NOT NULL, {defs}, PRIMARY KEY (node, {', '.join(key)}))")


def _fill_unambiguous(conn: sqlite3.Connection, table: str, key: tuple[str, ...]) -> None:
    cols = [c for c in _ours(conn, table) if c != "id"]
    keys = ", ".join(key)
    # One meaning per key across nodes: same name (processes/threads), one node (snapshots).
    same = {"process_names": "count(DISTINCT name) = 1", "thread_names": "count(DISTINCT comm) = 1"}.get(table, "count(*) = 1")
    conn.execute(
        f"INSERT OR IGNORE INTO {table}({', '.join(cols)}) SELECT {', '.join(cols)} FROM {table}_by_node "
        f"WHERE ({keys}) IN (SELECT {keys} FROM {table}_by_node GROUP BY {keys} HAVING {same}) ORDER BY node"
    )


def write_info(conn: sqlite3.Connection, facts: dict[str, object]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO schema_info(key, value) VALUES (?, ?)",
        [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in facts.items()],
    )
