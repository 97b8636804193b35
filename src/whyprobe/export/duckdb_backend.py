"""DuckDB: a columnar copy of a trace (`storage.backend: duckdb`, `export --duckdb`).

The tables are copied from SQLite through Arrow (DuckDB's sqlite extension
would need a download), with the same types as the Parquet export, and the
`host_events` view is recreated so the queries people type keep working.
duckdb is an optional dependency (`pip install whyprobe[duckdb]`).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from whyprobe.errors import CommandError
from whyprobe.export.arrow import exported_tables, record_batches, table_schema
from whyprobe.store.reader import TraceDB, open_trace

__all__ = ["to_duckdb", "copy_into_duckdb"]


def to_duckdb(db_path: str | os.PathLike, out_path: str | os.PathLike) -> dict[str, int]:
    """Copy a whyprobe or Ingero trace into a new DuckDB file at out_path; rows per table."""
    with open_trace(db_path) as db:
        return copy_into_duckdb(db, Path(out_path))


def copy_into_duckdb(db: TraceDB, out_path: Path) -> dict[str, int]:
    try:
        import duckdb
    except ImportError:
        raise CommandError("the DuckDB export needs the duckdb package: pip install 'whyprobe[duckdb]'") from None
    from whyprobe.store.schema import VIEWS

    copied = {}
    con = duckdb.connect(str(out_path))
    try:
        for table in exported_tables(db.conn):
            schema = table_schema(db.conn, table)
            source = pa.RecordBatchReader.from_batches(schema, record_batches(db.conn, table, schema))
            con.register("whyprobe_source", source)
            con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM whyprobe_source').fetchall()
            con.unregister("whyprobe_source")
            copied[table] = con.execute(f'SELECT count(*) FROM "{table}"').fetchall()[0][0]
        if db.has("host_events") and {"thread_names", "process_names", "sources", "ops"} <= set(copied):
            con.execute(VIEWS).fetchall()
    finally:
        con.close()
    return copied
