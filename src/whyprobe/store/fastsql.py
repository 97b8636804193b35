"""Bulk int64 rows into and out of SQLite through a small C helper (fastsql.c, built by make).

It runs on the sqlite3 handle of the caller's own sqlite3.Connection, so it
takes part in that connection's transaction and read-only mode. The handle is
found in the Connection object (CPython keeps `sqlite3 *db` first after the
object header, 3.8-3.13) and verified by asking SQLite for the handle's file
name; any doubt, or no compiled helper, and callers use plain executemany /
fetchall instead.
"""

from __future__ import annotations

import ctypes as ct
import re
import sqlite3
import sys
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np

from whyprobe.errors import StoreError

_SO = Path(__file__).with_name("_fastsql.so")
# Multi-row INSERTs cut SQLite's per-row CPU by ~1/3; a statement stays under SQLite's parameter limit.
ROWS_PER_STATEMENT = 64
_MAX_PARAMS = 32766
# One VALUES tuple; its items may call a function (one level of parentheses, e.g. NULLIF(?, 0)).
_SINGLE_VALUES = re.compile(r"^(INSERT\b.*?)\s+VALUES\s*(\((?:[^()]|\([^()]*\))*\))\s*$", re.IGNORECASE | re.DOTALL)


def _load():
    if not _SO.exists():
        return None
    try:
        lib = ct.CDLL(str(_SO))
    except OSError:
        return None
    i64p = ct.POINTER(ct.c_int64)
    lib.wp_db_filename.restype = ct.c_char_p
    lib.wp_db_filename.argtypes = [ct.c_void_p]
    lib.wp_insert_i64.restype = ct.c_int
    lib.wp_insert_i64.argtypes = [ct.c_void_p, ct.c_char_p, ct.c_int, ct.c_char_p, i64p, ct.c_int64, ct.c_int, ct.c_char_p, ct.c_int]
    lib.wp_insert_i64_text.restype = ct.c_int
    lib.wp_insert_i64_text.argtypes = [ct.c_void_p, ct.c_char_p, ct.c_int, ct.c_char_p, i64p, ct.c_int64, ct.c_int, ct.c_char_p, i64p,
                                       ct.POINTER(ct.c_int32), ct.c_char_p, ct.c_int]
    lib.wp_select_i64.restype = ct.c_int
    lib.wp_select_i64.argtypes = [ct.c_void_p, ct.c_char_p, i64p, ct.c_int, ct.c_int, ct.POINTER(i64p), i64p, ct.c_char_p, ct.c_int]
    lib.wp_free.argtypes = [ct.c_void_p]
    return lib


_lib = _load()


def _main_file(conn: sqlite3.Connection) -> str:
    for _, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return file or ""
    return ""


def _handle(conn: sqlite3.Connection) -> int | None:
    """The sqlite3* of `conn`, or None when it cannot be found with certainty."""
    if _lib is None or sys.implementation.name != "cpython":
        return None
    cached = getattr(conn, "_wp_handle", None) if hasattr(conn, "__dict__") else None
    if cached:
        return cached
    ptr = ct.c_void_p.from_address(id(conn) + object.__basicsize__).value
    if not ptr:
        return None
    expected = _main_file(conn)
    got = (_lib.wp_db_filename(ptr) or b"").decode(errors="replace")
    if not expected or got != expected:
        return None
    return ptr


def available(conn: sqlite3.Connection) -> bool:
    return _handle(conn) is not None


def _many_rows(sql: str, n: int) -> str | None:
    """`INSERT ... VALUES (t)` as one statement of n tuples, or None when sql is not of that form."""
    m = _SINGLE_VALUES.match(sql)
    if m is None:
        return None
    return f"{m.group(1)} VALUES {', '.join([m.group(2)] * n)}"


def insert_i64(conn: sqlite3.Connection, sql: str, rows: np.ndarray, rows_per_statement: int = ROWS_PER_STATEMENT) -> bool:
    """Insert a 2-D int64 array with `sql` (an INSERT of one VALUES tuple); False (nothing done) if the fast path is unavailable.

    Rows go `rows_per_statement` to a statement (the tuple repeated) when sql allows it.
    """
    db = _handle(conn)
    if db is None:
        return False
    data = np.ascontiguousarray(rows, dtype=np.int64)
    per = max(min(rows_per_statement, _MAX_PARAMS // max(data.shape[1], 1)), 1)
    many = _many_rows(sql, per) if per > 1 and data.shape[0] >= per else None
    err = ct.create_string_buffer(256)
    rc = _lib.wp_insert_i64(
        db, (many or sql).encode(), per if many else 1, sql.encode(),
        data.ctypes.data_as(ct.POINTER(ct.c_int64)), data.shape[0], data.shape[1], err, len(err),
    )
    if rc:
        raise StoreError(f"Cannot write events: {err.value.decode(errors='replace')} (SQLite error {rc})")
    return True


def insert_i64_text(conn: sqlite3.Connection, sql: str, rows: np.ndarray, text: bytes | np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> bool:
    """insert_i64 where each row's last parameter is TEXT: text[offsets[i]:offsets[i] + lengths[i]] (UTF-8), NULL where lengths[i] < 0.

    False (nothing done) if the fast path is unavailable."""
    db = _handle(conn)
    if db is None:
        return False
    data = np.ascontiguousarray(rows, dtype=np.int64)
    off = np.ascontiguousarray(offsets, dtype=np.int64)
    lens = np.ascontiguousarray(lengths, dtype=np.int32)
    if not (len(off) == len(lens) == data.shape[0]):
        raise ValueError(f"{len(off)} offsets and {len(lens)} lengths for {data.shape[0]} rows")
    blob = np.frombuffer(text, np.uint8) if isinstance(text, (bytes, bytearray)) else np.ascontiguousarray(text, np.uint8)
    valid = lens >= 0
    if valid.any() and int((off[valid] + lens[valid]).max()) > len(blob):
        raise ValueError("a text span runs past the end of the buffer")
    per = max(min(ROWS_PER_STATEMENT, _MAX_PARAMS // (data.shape[1] + 1)), 1)
    many = _many_rows(sql, per) if per > 1 and data.shape[0] >= per else None
    err = ct.create_string_buffer(256)
    rc = _lib.wp_insert_i64_text(
        db, (many or sql).encode(), per if many else 1, sql.encode(), data.ctypes.data_as(ct.POINTER(ct.c_int64)), data.shape[0],
        data.shape[1], blob.ctypes.data_as(ct.c_char_p), off.ctypes.data_as(ct.POINTER(ct.c_int64)),
        lens.ctypes.data_as(ct.POINTER(ct.c_int32)), err, len(err),
    )
    if rc:
        raise StoreError(f"Cannot write events: {err.value.decode(errors='replace')} (SQLite error {rc})")
    return True


def select_i64(conn: sqlite3.Connection, sql: str, params: Sequence[int], ncols: int, *, copy: bool = True) -> np.ndarray | None:
    """Rows of an all-integer SELECT as an (n, ncols) int64 array; None if the fast path is unavailable.

    `copy=False` hands back the helper's own buffer (freed when the last view of it goes):
    no second pass over a result of a hundred megabytes."""
    db = _handle(conn)
    if db is None or not all(isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in params):
        return None
    prm = (ct.c_int64 * max(len(params), 1))(*[int(p) for p in params])
    out = ct.POINTER(ct.c_int64)()
    n = ct.c_int64()
    err = ct.create_string_buffer(256)
    rc = _lib.wp_select_i64(db, sql.encode(), prm, len(params), ncols, ct.byref(out), ct.byref(n), err, len(err))
    if rc:
        raise StoreError(f"Cannot read the trace: {err.value.decode(errors='replace')} (SQLite error {rc}; is the file intact? try `sqlite3 FILE 'PRAGMA integrity_check'`)")
    if n.value == 0 or copy:
        try:
            return np.ctypeslib.as_array(out, shape=(n.value, ncols)).copy() if n.value else np.zeros((0, ncols), np.int64)
        finally:
            _lib.wp_free(out)
    owner = (ct.c_int64 * (n.value * ncols)).from_address(ct.addressof(out.contents))
    weakref.finalize(owner, _lib.wp_free, ct.cast(out, ct.c_void_p).value)
    return np.frombuffer(owner, np.int64).reshape(n.value, ncols)
