"""Render `op_stats` results: a rich table for people, a JSON list for machines."""

from __future__ import annotations

from typing import IO

import orjson
from rich import box
from rich.console import Console
from rich.table import Table

from whyprobe.units import fmt_count, fmt_ns


def render_stats_table(stats: list[dict], console: Console, *, title: str = "") -> None:
    if not stats:
        console.print("No events match.")
        return
    table = Table(title=title or None, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("source", no_wrap=True)
    table.add_column("op", overflow="fold")
    kernels = any("kernel" in s for s in stats)
    if kernels:
        table.add_column("kernel", overflow="fold")
    for name in ("count", "p50", "p95", "p99", "p99.9", "max", "total", "errors"):
        table.add_column(name, justify="right", no_wrap=True)
    for s in stats:
        codes = ", ".join(f"{code}×{n}" for code, n in sorted(s["error_codes"].items(), key=lambda kv: -kv[1])[:3])
        errors = f"{fmt_count(s['errors'])} ({codes})" if s["errors"] else "0"
        table.add_row(
            s["source"],
            s["op"],
            *([s.get("kernel", "")] if kernels else []),
            fmt_count(s["count"]),
            fmt_ns(s["p50_ns"]),
            fmt_ns(s["p95_ns"]),
            fmt_ns(s["p99_ns"]),
            fmt_ns(s["p999_ns"]),
            fmt_ns(s["max_ns"]),
            fmt_ns(s["total_ns"]),
            errors,
        )
    console.print(table)


def render_stats_json(stats: list[dict], out: IO[str]) -> None:
    # error_codes has int keys; JSON object keys are their decimal strings.
    out.write(orjson.dumps(stats, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")
