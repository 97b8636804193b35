"""`whyprobe stats`: per-op count, exact latency quantiles, total time and errors."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from whyprobe.errors import CommandError


def register(app: typer.Typer) -> None:
    @app.command("stats")
    def stats(
        db: str = typer.Argument(..., metavar="DB", help="A whyprobe or Ingero database."),
        json_out: bool = typer.Option(False, "--json", help="Print a JSON list (one object per op)."),
        pid: Optional[int] = typer.Option(None, "--pid", help="Only events of this process."),
        source: Optional[str] = typer.Option(None, "--source", help="Only this source (CUDA, DRIVER, HOST, IO, ...)."),
        by: Optional[str] = typer.Option(None, "--by", help="kernel: one row per (launch op, kernel), named from the trace (hex when unresolved)."),
    ) -> None:
        """Per-op count, p50/p95/p99/p99.9/max latency, total time and error codes.

        \b
          whyprobe stats t.db
          whyprobe stats t.db --source CUDA --json | jq '.[0]'
          whyprobe stats t.db --by kernel
        """
        from rich.console import Console

        from whyprobe.analyze.stats import op_stats
        from whyprobe.reporters.stats import render_stats_json, render_stats_table
        from whyprobe.store.reader import open_trace

        if by not in (None, "kernel"):
            raise CommandError(f"--by takes 'kernel', not {by!r}")
        with open_trace(db) as trace:
            result = op_stats(trace, pid=pid, source=source, by_kernel=by == "kernel")
        if json_out:
            render_stats_json(result, sys.stdout)
        else:
            # Pipes and files get a full-width table rather than rich's 80-column default.
            console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 132)
            render_stats_table(result, console, title=f"{db} ({trace.flavor})")
