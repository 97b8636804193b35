"""`whyprobe stacks`: the call stacks behind a trace's events."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from whyprobe.commands.common import check_op
from whyprobe.errors import CommandError


def register(app: typer.Typer) -> None:
    @app.command("stacks")
    def stacks_cmd(
        db: Path = typer.Argument(..., help="Trace database."),
        op: Optional[str] = typer.Option(None, "--op", help="Only stacks of this op, e.g. cudaLaunchKernel."),
        limit: int = typer.Option(10, "--limit", help="How many stacks."),
        folded: bool = typer.Option(False, "--folded", help="Flamegraph folded lines (frame;frame;op count)."),
        json_out: bool = typer.Option(False, "--json", help="JSON output."),
    ) -> None:
        """Most frequent call stacks per op, or folded lines for a flamegraph.

        \b
          whyprobe stacks t.db --op cudaLaunchKernel
          whyprobe stacks t.db --folded | flamegraph.pl > f.svg
        """
        from whyprobe.analyze.stacks import folded as folded_lines
        from whyprobe.analyze.stacks import top_stacks
        from whyprobe.reporters.stacks import render_stacks, render_stacks_json
        from whyprobe.store.reader import open_trace

        if limit < 1:
            raise CommandError(f"--limit must be at least 1 (got {limit})")
        with open_trace(db) as trace:
            check_op(op, trace)
            if folded:
                sys.stdout.write(folded_lines(trace, op))
                return
            stacks = top_stacks(trace, op=op, limit=limit)
        (render_stacks_json if json_out else render_stacks)(stacks, sys.stdout)
