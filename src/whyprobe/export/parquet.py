"""Parquet export: one zstd-compressed file per table, `<DIR>/<table>.parquet`.

Every table is written, empty ones too (with their schema), so a fleet loader
can rely on the file set; rows stream in batches, never a whole table in memory.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from whyprobe.export.arrow import exported_tables, record_batches, table_schema
from whyprobe.store.reader import TraceDB

__all__ = ["write_parquet"]


def write_parquet(db: TraceDB, out_dir: Path) -> dict[str, int]:
    """Write every table of db into out_dir (which must exist); returns rows written per table."""
    written = {}
    for table in exported_tables(db.conn):
        schema = table_schema(db.conn, table)
        rows = 0
        with pq.ParquetWriter(out_dir / f"{table}.parquet", schema, compression="zstd") as writer:
            for batch in record_batches(db.conn, table, schema):
                writer.write_batch(batch)
                rows += batch.num_rows
        written[table] = rows
    return written
