"""Parquet export as one fleet dataset: `<DIR>/<table>/node=<node>/<trace>.parquet`.

Many nodes export into the same DIR and it stays one dataset that ClickHouse,
DuckDB, Trino or Spark read as it is (hive-style `node=` partitions). Every row
carries its `node`, and rows with `source`/`op` ids carry their names too, so a
fleet query needs no lookup table from any one node. A merged trace (`whyprobe
merge`) is split into its nodes' partitions; its node-qualified `<table>_by_node`
tables are written as `<table>`.

A file is named after the trace it comes from (its node, first session start
and file stem), so exporting a trace again replaces nothing without --force and
two traces never overwrite each other. Every table is written, empty ones too
(with their schema), so a loader can rely on the file set; rows stream in
batches, never a whole table in memory; the files appear only once all of them
are complete, and a failure leaves the dataset as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from whyprobe.errors import CommandError
from whyprobe.export.arrow import exported_tables, quote, record_batches, table_schema
from whyprobe.store.reader import TraceDB
from whyprobe.store.transfer import BY_NODE, describe

__all__ = ["write_parquet", "partition_dir"]

_NAMES = {
    "source_name": "(SELECT name FROM sources WHERE id = t.source)",
    "op_name": "(SELECT name FROM ops WHERE source_id = t.source AND op_id = t.op)",
}
_BY_NODE = {f"{table}_by_node": table for table, _key in BY_NODE}


@dataclass(frozen=True)
class _Part:
    table: str  # name in the dataset
    source: str  # table read from the trace
    node: str
    path: Path


def partition_dir(out_dir: Path, table: str, node: str) -> Path:
    """`DIR/<table>/node=<node>`, the node escaped as Hive escapes partition values."""
    return out_dir / table / f"node={urllib.parse.quote(node, safe='')}"


def write_parquet(db: TraceDB, out_dir: Path, *, force: bool = False) -> dict[str, int]:
    """Add db's tables to the dataset at out_dir (which must exist); rows written per table.

    Refuses, before writing anything, to replace a file of the same trace unless force.
    """
    default_node = describe(db.path, node_fallback=None).node or "unknown"
    parts = _plan(db, out_dir, default_node)
    existing = [p.path for p in parts if p.path.exists()]
    if existing and not force:
        raise CommandError(f"this trace is already in the dataset, will not overwrite without --force: {existing[0]}")
    written: dict[str, int] = {}
    staged: list[tuple[Path, Path]] = []
    made = [d for d in dict.fromkeys(p.path.parent for p in parts) if not d.exists()]
    try:
        for part in parts:
            part.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = part.path.with_name(f".{part.path.name}.{os.getpid()}.tmp")
            staged.append((tmp, part.path))
            written[part.table] = written.get(part.table, 0) + _write_part(db, part, tmp, default_node)
        for tmp, final in staged:  # only once every file is complete
            os.replace(tmp, final)
    except BaseException:
        for tmp, _final in staged:
            tmp.unlink(missing_ok=True)
        for d in reversed(made):
            for empty in (d, d.parent):
                with contextlib.suppress(OSError):
                    empty.rmdir()
        raise
    return written


def _plan(db: TraceDB, out_dir: Path, default_node: str) -> list[_Part]:
    tables = exported_tables(db.conn)
    file_name = _trace_file_name(db, default_node)
    parts = []
    for source in tables:
        if f"{source}_by_node" in tables:
            continue  # a merged trace: its node-qualified twin is the complete table
        table = _BY_NODE.get(source, source)
        for node in _nodes_of(db, source, default_node):
            parts.append(_Part(table, source, node, partition_dir(out_dir, table, node) / file_name))
    return parts


def _nodes_of(db: TraceDB, table: str, default_node: str) -> list[str]:
    if not db.has(table, "node"):
        return [default_node]
    rows = db.conn.execute(f"SELECT DISTINCT COALESCE(NULLIF(node, ''), ?) FROM {quote(table)} ORDER BY 1", (default_node,))
    return [n for (n,) in rows] or [default_node]


def _write_part(db: TraceDB, part: _Part, tmp: Path, default_node: str) -> int:
    base = table_schema(db.conn, part.source)
    computed = {}
    fields = list(base)
    if "node" in base.names:
        computed["node"] = "COALESCE(NULLIF(t.node, ''), :default_node)"
        where = "WHERE COALESCE(NULLIF(t.node, ''), :default_node) = :node"
    else:
        computed["node"] = ":node"
        fields.append(pa.field("node", pa.string(), nullable=False))
        where = ""
    if {"source", "op"} <= set(base.names) and db.has("sources") and db.has("ops"):
        for name, expr in _NAMES.items():
            computed[name] = expr
            fields.append(pa.field(name, pa.string()))
    schema = pa.schema(fields)
    params = {"node": part.node, "default_node": default_node}
    rows = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for batch in record_batches(db.conn, part.source, schema, computed=computed, where=where, params=params):
            writer.write_batch(batch)
            rows += batch.num_rows
    os.chmod(tmp, 0o644)
    return rows


def _trace_file_name(db: TraceDB, node: str) -> str:
    """Stable for one trace, distinct between traces: the stem plus a digest of node, first
    session start and stem (a re-export of the same file lands on the same name)."""
    started = ""
    if db.has("sessions", "started_at"):
        started = str(db.conn.execute("SELECT COALESCE(min(started_at), 0) FROM sessions").fetchone()[0])
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", db.path.stem) or "trace"
    digest = hashlib.sha1(f"{node}\0{started}\0{db.path.stem}".encode()).hexdigest()[:12]
    return f"{stem}-{digest}.parquet"
