"""`whyprobe check`: can this host trace, and what will be traced."""

from __future__ import annotations

import sys

import typer

from whyprobe.errors import CommandError


def register(app: typer.Typer) -> None:
    @app.command("check")
    def check(
        json_out: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Readiness report: kernel, BTF, which program/attach types work (probed), CUDA libraries, GPUs.

        Exit code 0 only if tracing can work here.

        \b
          sudo whyprobe check
          sudo whyprobe check --json | jq .kernel.capabilities
        """
        import orjson
        from rich.console import Console

        from whyprobe.readiness import readiness_report
        from whyprobe.reporters.check import render_check

        report = readiness_report()
        if json_out:
            sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            render_check(report, Console(file=sys.stdout))
        if not report["can_trace"]:
            raise CommandError("tracing cannot work here: " + "; ".join(report["problems"]), exit_code=2)
