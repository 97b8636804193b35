"""Render query results: an aligned text table, JSON, or CSV, to an explicit stream."""

from __future__ import annotations

import csv
import json
from typing import Any, Sequence, TextIO


def _cell(v: Any) -> str:
    return "NULL" if v is None else str(v)


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO, *, max_width: int = 60) -> None:
    cells = [[_cell(v)[:max_width] for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    out.write("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for r in cells:
        out.write("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n")


def _numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def render_json(columns: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    json.dump([dict(zip(columns, r)) for r in rows], out, default=str)
    out.write("\n")


def render_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    w.writerows(["" if v is None else v for v in r] for r in rows)
