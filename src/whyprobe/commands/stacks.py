"""`whyprobe stacks`: the call stacks behind a trace's events."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from whyprobe.commands.common import check_op
from whyprobe.errors import CommandError

CPU_SAMPLE = "cpu_sample"
CPU_SAMPLE_KEY = (3, 16)  # events.Source.HOST, the profile family's op (imported lazily: the CLI starts without numpy)


def register(app: typer.Typer) -> None:
    @app.command("stacks")
    def stacks_cmd(
        db: Path = typer.Argument(..., help="Trace database."),
        op: Optional[str] = typer.Option(None, "--op", help="Only stacks of this op, e.g. cudaLaunchKernel."),
        on_cpu: bool = typer.Option(False, "--on-cpu", help="Stacks of the on-CPU samples (what the traced threads ran)."),
        limit: int = typer.Option(10, "--limit", help="How many stacks."),
        folded: bool = typer.Option(False, "--folded", help="Flamegraph folded lines (frame;frame;op count)."),
        json_out: bool = typer.Option(False, "--json", help="JSON output."),
    ) -> None:
        """Most frequent call stacks per op, or folded lines for a flamegraph.

        \b
          whyprobe stacks t.db --op cudaLaunchKernel
          whyprobe stacks t.db --on-cpu
          whyprobe stacks t.db --on-cpu --folded | flamegraph.pl > f.svg
        """
        from whyprobe.analyze.stacks import folded as folded_lines
        from whyprobe.analyze.stacks import top_stacks
        from whyprobe.reporters.stacks import render_stacks, render_stacks_json
        from whyprobe.store.reader import open_trace

        if limit < 1:
            raise CommandError(f"--limit must be at least 1 (got {limit})")
        if on_cpu and op is not None:
            raise CommandError("--on-cpu and --op both choose the events: give one of them")
        with open_trace(db) as trace:
            if on_cpu:
                op = CPU_SAMPLE
                if not trace.conn.execute("SELECT 1 FROM events WHERE source = ? AND op = ? LIMIT 1", CPU_SAMPLE_KEY).fetchone():
                    raise CommandError(f"{db} has no on-CPU samples: record with `whyprobe trace` (the profile family is on by default)")
            check_op(op, trace)
            if folded:
                sys.stdout.write(folded_lines(trace, op))
                return
            stacks = top_stacks(trace, op=op, limit=limit)
        (render_stacks_json if json_out else render_stacks)(stacks, sys.stdout)
