"""SQLite tables as Arrow record batches: the common source of the Parquet and DuckDB exports.

Column types come from the declared SQLite type (INTEGER → int64, REAL →
float64, TEXT → string, BLOB → binary); a column whose stored values do not
all have that type (SQLite is dynamically typed; Ingero's merged `events.id`
is TEXT) is exported as string, decided up front with one SQL count so every
batch of a table has the same schema.
"""

from __future__ import annotations

import sqlite3
from typing import Iterator

import pyarrow as pa

__all__ = ["exported_tables", "table_schema", "record_batches", "quote", "BATCH_ROWS"]

BATCH_ROWS = 65_536
# affinity → (Arrow type, SQLite storage classes that fit it)
_TYPES = {
    "integer": (pa.int64(), ("integer",)),
    "real": (pa.float64(), ("real", "integer")),
    "text": (pa.string(), ("text",)),
    "blob": (pa.binary(), ("blob",)),
}


def exported_tables(conn: sqlite3.Connection) -> list[str]:
    """Every ordinary table (not views, not sqlite_* internals), in name order."""
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
    return [name for (name,) in rows]


def table_schema(conn: sqlite3.Connection, table: str) -> pa.Schema:
    fields = []
    for _, name, declared, notnull, _, _ in conn.execute(f"PRAGMA table_info({quote(table)})"):
        arrow_type, allowed = _TYPES[_affinity(declared)]
        if arrow_type != pa.string():
            marks = ", ".join("?" * len(allowed))
            sql = f"SELECT count(*) FROM {quote(table)} WHERE typeof({quote(name)}) NOT IN ({marks}, 'null')"
            if conn.execute(sql, allowed).fetchone()[0]:
                arrow_type = pa.string()
        fields.append(pa.field(name, arrow_type, nullable=not notnull or arrow_type == pa.string()))
    return pa.schema(fields)


def record_batches(
    conn: sqlite3.Connection,
    table: str,
    schema: pa.Schema,
    batch_rows: int = BATCH_ROWS,
    *,
    computed: dict[str, str] | None = None,
    where: str = "",
    params: dict | tuple = (),
) -> Iterator[pa.RecordBatch]:
    """Rows of `table` in `schema`'s columns; a column named in `computed` is that SQL
    expression instead (over the table aliased `t`), e.g. a resolved name or a constant."""
    computed = computed or {}
    columns = ", ".join(
        computed[f.name] if f.name in computed
        else f"CAST(t.{quote(f.name)} AS TEXT)" if f.type == pa.string()
        else f"t.{quote(f.name)}"
        for f in schema
    )
    cursor = conn.execute(f"SELECT {columns} FROM {quote(table)} t {where}", params)
    while rows := cursor.fetchmany(batch_rows):
        arrays = [pa.array(column, type=f.type) for column, f in zip(zip(*rows), schema)]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _affinity(declared: str) -> str:
    """SQLite's type-affinity rules (datatype docs, section 3.1); untyped and NUMERIC columns
    go through the mixed-type check like the rest."""
    d = (declared or "").lower()
    if "int" in d:
        return "integer"
    if any(t in d for t in ("char", "clob", "text")) or not d:
        return "text"
    if "blob" in d:
        return "blob"
    return "real"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
