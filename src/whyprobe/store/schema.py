"""The SQLite schema: table names and columns are a contract (tests, MCP tools, exports).

`events` keeps Ingero's columns (so its tools and ours read each other's files)
and adds cpu, arg2, aux, session_id, node and detail. Every other table is
ours. SCHEMA_VERSION goes into `PRAGMA user_version`; MIGRATIONS upgrade older
files in place, and a file written by a newer whyprobe is refused.
"""

from __future__ import annotations

import sqlite3

from whyprobe.errors import StoreError
from whyprobe.events import OPS, SOURCE_DESCRIPTIONS

SCHEMA_VERSION = 2
APPLICATION_ID = 0x57485950  # "WHYP"

TABLES = """
CREATE TABLE IF NOT EXISTS schema_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ops (
    source_id   INTEGER NOT NULL,
    op_id       INTEGER NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    PRIMARY KEY (source_id, op_id)
);
CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY,
    timestamp  INTEGER NOT NULL,            -- unix ns (start of the call / interval)
    pid        INTEGER NOT NULL,
    tid        INTEGER NOT NULL,
    source     INTEGER NOT NULL,            -- sources.id
    op         INTEGER NOT NULL,            -- ops.op_id within the source
    duration   INTEGER NOT NULL,            -- ns
    gpu_id     INTEGER NOT NULL DEFAULT 0,
    arg0       INTEGER NOT NULL DEFAULT 0,
    arg1       INTEGER NOT NULL DEFAULT 0,
    ret_code   INTEGER NOT NULL DEFAULT 0,
    stack_hash INTEGER NOT NULL DEFAULT 0,  -- stack_traces.hash, 0 = none
    cgroup_id  INTEGER NOT NULL DEFAULT 0,
    cpu        INTEGER NOT NULL DEFAULT -1,
    arg2       INTEGER NOT NULL DEFAULT 0,
    aux        INTEGER NOT NULL DEFAULT 0,
    flags      INTEGER NOT NULL DEFAULT 0,
    session_id INTEGER NOT NULL DEFAULT 0,
    node       TEXT NOT NULL DEFAULT '',
    detail     TEXT                         -- path, address, argv ... where the op has one
);
CREATE INDEX IF NOT EXISTS idx_events_timestamp ON events(timestamp);
CREATE INDEX IF NOT EXISTS idx_events_source_op ON events(source, op, duration);
CREATE INDEX IF NOT EXISTS idx_events_tid_ts ON events(tid, timestamp);
CREATE INDEX IF NOT EXISTS idx_events_pid ON events(pid);
CREATE TABLE IF NOT EXISTS stack_traces (
    hash   INTEGER PRIMARY KEY,             -- FNV-1a 64 of the raw frames
    ips    TEXT NOT NULL,                   -- JSON array of hex IPs
    frames TEXT NOT NULL DEFAULT ''         -- JSON [{"s": symbol, "f": file, "l": line, "py": bool}]
);
CREATE TABLE IF NOT EXISTS kernel_names (
    pid    INTEGER NOT NULL,
    handle INTEGER NOT NULL,                -- launch events' arg0: host stub pointer (runtime) or CUfunction/CUkernel (driver)
    name   TEXT NOT NULL,                   -- demangled
    via    TEXT NOT NULL DEFAULT '',        -- symtab/dynsym of the mapped file, or the driver call that named it
    PRIMARY KEY (pid, handle)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS process_names (
    pid        INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,               -- comm
    seen_at    INTEGER NOT NULL DEFAULT 0,
    ppid       INTEGER NOT NULL DEFAULT 0,
    cmdline    TEXT NOT NULL DEFAULT '',
    exe        TEXT NOT NULL DEFAULT '',
    started_at INTEGER NOT NULL DEFAULT 0,
    exited_at  INTEGER NOT NULL DEFAULT 0,
    exit_code  INTEGER
);
CREATE TABLE IF NOT EXISTS thread_names (
    tid     INTEGER PRIMARY KEY,
    pid     INTEGER NOT NULL,
    comm    TEXT NOT NULL,
    seen_at INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sessions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at    INTEGER NOT NULL,         -- unix ns
    stopped_at    INTEGER NOT NULL DEFAULT 0,
    gpu_model     TEXT NOT NULL DEFAULT '',
    gpu_driver    TEXT NOT NULL DEFAULT '',
    cpu_model     TEXT NOT NULL DEFAULT '',
    cpu_cores     INTEGER NOT NULL DEFAULT 0,
    mem_total     INTEGER NOT NULL DEFAULT 0,
    kernel        TEXT NOT NULL DEFAULT '',
    os_release    TEXT NOT NULL DEFAULT '',
    cuda_ver      TEXT NOT NULL DEFAULT '',
    python_ver    TEXT NOT NULL DEFAULT '',
    whyprobe_ver  TEXT NOT NULL DEFAULT '',
    hostname      TEXT NOT NULL DEFAULT '',
    node          TEXT NOT NULL DEFAULT '',
    clock_offset_ns INTEGER NOT NULL DEFAULT 0, -- wall clock minus CLOCK_MONOTONIC
    clock_skew_ns INTEGER NOT NULL DEFAULT 0, -- this host's wall clock minus the fleet reference; merge subtracts it
    pid_filter    TEXT NOT NULL DEFAULT '',
    probes        TEXT NOT NULL DEFAULT '',
    argv          TEXT NOT NULL DEFAULT '',
    flags         TEXT NOT NULL DEFAULT '',  -- JSON
    events_seen   INTEGER NOT NULL DEFAULT 0,
    ring_drops    INTEGER NOT NULL DEFAULT 0, -- ring reservations that failed in the kernel
    queue_drops   INTEGER NOT NULL DEFAULT 0, -- events lost because the writer queue was full
    rate_drops    INTEGER NOT NULL DEFAULT 0, -- events over storage.max_events_per_second
    payload_drops INTEGER NOT NULL DEFAULT 0, -- payload records (paths, argv, addresses, MCP bytes) the kernel could not ship; their events are stored, flagged detail-lost
    pruned        INTEGER NOT NULL DEFAULT 0  -- events removed by retention
);
CREATE TABLE IF NOT EXISTS system_snapshots (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp INTEGER NOT NULL UNIQUE,
    cpu_pct   REAL NOT NULL,
    mem_pct   REAL NOT NULL,
    mem_avail INTEGER NOT NULL,
    swap_mb   INTEGER NOT NULL,
    load_avg  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS event_aggregates (
    bucket  INTEGER NOT NULL,               -- minute-truncated unix ns
    source  INTEGER NOT NULL,
    op      INTEGER NOT NULL,
    pid     INTEGER NOT NULL DEFAULT 0,
    count   INTEGER NOT NULL DEFAULT 0,
    stored  INTEGER NOT NULL DEFAULT 0,
    sum_dur INTEGER NOT NULL DEFAULT 0,
    min_dur INTEGER NOT NULL DEFAULT 0,
    max_dur INTEGER NOT NULL DEFAULT 0,
    sum_arg0 INTEGER NOT NULL DEFAULT 0,
    node    TEXT NOT NULL DEFAULT '',       -- '' = this host; merge fills it
    PRIMARY KEY (bucket, source, op, pid, node)
);
CREATE TABLE IF NOT EXISTS cgroup_metadata (
    cgroup_id    INTEGER PRIMARY KEY,
    container_id TEXT NOT NULL DEFAULT '',
    cgroup_path  TEXT NOT NULL DEFAULT '',
    pod_name     TEXT NOT NULL DEFAULT '',
    namespace    TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS syscall_stats (
    session_id INTEGER NOT NULL DEFAULT 0,
    pid        INTEGER NOT NULL,
    tid        INTEGER NOT NULL,
    nr         INTEGER NOT NULL,            -- x86_64 syscall number
    count      INTEGER NOT NULL,
    errors     INTEGER NOT NULL DEFAULT 0,
    total_ns   INTEGER NOT NULL,
    max_ns     INTEGER NOT NULL DEFAULT 0,
    hist       TEXT NOT NULL DEFAULT '[]',  -- JSON log2(ns) bucket counts
    PRIMARY KEY (session_id, pid, tid, nr)
);
CREATE TABLE IF NOT EXISTS findings (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    finding_key  TEXT NOT NULL,             -- stable identity of the finding across runs
    created_at   INTEGER NOT NULL,          -- unix ns when explain ran
    window_start INTEGER NOT NULL,
    window_end   INTEGER NOT NULL,
    kind         TEXT NOT NULL,             -- tail | gap
    severity     TEXT NOT NULL,
    source       TEXT NOT NULL DEFAULT '',
    op           TEXT NOT NULL DEFAULT '',
    pid          INTEGER NOT NULL DEFAULT 0,
    tid          INTEGER NOT NULL DEFAULT 0,
    lost_ns      INTEGER NOT NULL DEFAULT 0,
    summary      TEXT NOT NULL,
    body         TEXT NOT NULL              -- the finding as in `explain --json`
);
CREATE INDEX IF NOT EXISTS idx_findings_key ON findings(finding_key, created_at);
CREATE TABLE IF NOT EXISTS mcp_messages (
    id          INTEGER PRIMARY KEY,
    timestamp   INTEGER NOT NULL,           -- unix ns of the first byte seen
    connection  TEXT NOT NULL,              -- pipe inode / socket pair / TLS session
    transport   TEXT NOT NULL,              -- stdio | unix | http | https
    direction   TEXT NOT NULL,              -- client->server | server->client
    sender_pid  INTEGER NOT NULL DEFAULT 0,
    receiver_pid INTEGER NOT NULL DEFAULT 0,
    sender_comm TEXT NOT NULL DEFAULT '',
    jsonrpc_id  TEXT,                       -- JSON text of the id, NULL for notifications
    method      TEXT,
    kind        TEXT NOT NULL,              -- request | response | error | notification
    tool_name   TEXT,
    size        INTEGER NOT NULL,
    truncated   INTEGER NOT NULL DEFAULT 0,
    latency_ns  INTEGER,                    -- responses: since their request
    request_id  INTEGER,                    -- responses: mcp_messages.id of the request
    session_id  TEXT,                       -- Mcp-Session-Id for HTTP
    payload     TEXT NOT NULL               -- redacted JSON, capped
);
CREATE INDEX IF NOT EXISTS idx_mcp_messages_ts ON mcp_messages(timestamp);
CREATE TABLE IF NOT EXISTS mcp_tool_snapshots (
    id          INTEGER PRIMARY KEY,
    timestamp   INTEGER NOT NULL,
    server      TEXT NOT NULL,              -- serverInfo name/version or command line
    tool_name   TEXT NOT NULL,
    description TEXT NOT NULL,
    input_schema TEXT NOT NULL,
    digest      TEXT NOT NULL,
    flags       TEXT NOT NULL DEFAULT '[]'  -- JSON: injection patterns found, with evidence
);
CREATE TABLE IF NOT EXISTS tool_calls (
    id           INTEGER PRIMARY KEY,
    request_msg  INTEGER,                   -- mcp_messages.id
    server_pid   INTEGER NOT NULL,
    tool_name    TEXT NOT NULL,
    started_at   INTEGER NOT NULL,          -- unix ns: server read the request
    ended_at     INTEGER NOT NULL,          -- unix ns: server wrote the response
    duration     INTEGER NOT NULL,
    is_error     INTEGER NOT NULL DEFAULT 0,
    attribution  TEXT NOT NULL DEFAULT 'exclusive', -- exclusive (alone on its server) | thread (overlapping, told apart by handler thread) | shared (overlapping)
    cpu_user_ns  INTEGER NOT NULL DEFAULT 0,
    cpu_sys_ns   INTEGER NOT NULL DEFAULT 0,
    syscalls     INTEGER NOT NULL DEFAULT 0,
    syscall_ns   INTEGER NOT NULL DEFAULT 0,
    files        TEXT NOT NULL DEFAULT '[]',
    endpoints    TEXT NOT NULL DEFAULT '[]',
    children     TEXT NOT NULL DEFAULT '[]',
    libraries    TEXT NOT NULL DEFAULT '[]',
    block_bytes  INTEGER NOT NULL DEFAULT 0,
    cuda_calls   INTEGER NOT NULL DEFAULT 0,
    summary      TEXT NOT NULL DEFAULT '{}' -- JSON: top syscalls and the rest
);
CREATE TABLE IF NOT EXISTS tool_call_events (
    call_id  INTEGER NOT NULL,              -- tool_calls.id
    event_id INTEGER NOT NULL,              -- events.id
    PRIMARY KEY (call_id, event_id)
);
"""

# Also the sidecar audit database of `whyprobe mcp` (server/security.py).
AUDIT_LOG = """
CREATE TABLE IF NOT EXISTS audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp   INTEGER NOT NULL,
    client      TEXT NOT NULL,
    tool        TEXT NOT NULL,
    args_digest TEXT NOT NULL,
    rows        INTEGER NOT NULL DEFAULT 0,
    duration_ns INTEGER NOT NULL DEFAULT 0,
    allowed     INTEGER NOT NULL,
    reason      TEXT NOT NULL DEFAULT ''
);
"""

VIEWS = """
CREATE VIEW IF NOT EXISTS host_events AS
SELECT e.id, e.timestamp, e.pid, e.tid,
       COALESCE(t.comm, p.name, '') AS comm,
       s.name AS source,
       COALESCE(o.name, CAST(e.op AS TEXT)) AS op,
       CASE WHEN e.source = 8 THEN COALESCE(o.name, 'syscall_' || e.op) END AS syscall,
       e.ret_code AS ret, e.duration, e.cpu, e.arg0, e.arg1, e.arg2, e.aux, e.detail
FROM events e
LEFT JOIN thread_names t ON t.tid = e.tid
LEFT JOIN process_names p ON p.pid = e.pid
LEFT JOIN sources s ON s.id = e.source
LEFT JOIN ops o ON o.source_id = e.source AND o.op_id = e.op;
"""

# Index = the user_version a migration upgrades *from*; each is a list of statements.
MIGRATIONS: dict[int, list[str]] = {
    1: ["ALTER TABLE sessions ADD COLUMN payload_drops INTEGER NOT NULL DEFAULT 0"],
}


def seed_names(conn: sqlite3.Connection, extra_ops: list[tuple[int, int, str, str]] = ()) -> None:
    """Fill `sources` and `ops` (idempotent); extra_ops adds e.g. syscall names."""
    conn.executemany(
        "INSERT OR REPLACE INTO sources(id, name, description) VALUES (?, ?, ?)",
        [(int(s), s.name, d) for s, d in SOURCE_DESCRIPTIONS.items()],
    )
    conn.executemany(
        "INSERT OR REPLACE INTO ops(source_id, op_id, name, description) VALUES (?, ?, ?, ?)",
        [(int(o.source), o.op, o.name, o.description) for o in OPS] + list(extra_ops),
    )


def create(conn: sqlite3.Connection) -> None:
    """Create or upgrade a whyprobe database on a writable connection."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"database was written by a newer whyprobe (schema {version}, this one reads up to {SCHEMA_VERSION})")
    with conn:
        while 0 < version < SCHEMA_VERSION:
            for stmt in MIGRATIONS[version]:
                conn.execute(stmt)
            version += 1
        conn.executescript(TABLES)
        conn.executescript(AUDIT_LOG)
        conn.executescript(VIEWS)
        seed_names(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.executemany(
            "INSERT OR REPLACE INTO schema_info(key, value) VALUES (?, ?)",
            [
                ("producer", "whyprobe"),
                ("version", str(SCHEMA_VERSION)),
                ("timestamp_unit", "nanoseconds (Unix epoch)"),
                ("duration_unit", "nanoseconds"),
            ],
        )
