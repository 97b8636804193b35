"""`whyprobe export DB`: Perfetto, Chrome JSON, OTLP, Parquet or DuckDB."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from whyprobe.errors import CommandError, UsageError


def register(app: typer.Typer) -> None:
    @app.command("export")
    def _cmd(
        db: Path = typer.Argument(..., help="Trace database (whyprobe or Ingero)."),
        perfetto: Optional[Path] = typer.Option(None, "--perfetto", metavar="OUT.pftrace", help="Perfetto protobuf trace (open in ui.perfetto.dev)."),
        chrome: Optional[Path] = typer.Option(None, "--chrome", metavar="OUT.json", help="Chrome trace-event JSON."),
        otlp: Optional[str] = typer.Option(None, "--otlp", metavar="URL", help="Send spans and metrics to an OTLP/HTTP receiver, e.g. http://127.0.0.1:4318."),
        parquet: Optional[Path] = typer.Option(None, "--parquet", metavar="DIR", help="Add this trace to the Parquet dataset DIR: DIR/<table>/node=<node>/<trace>.parquet (many nodes, one DIR)."),
        duckdb: Optional[Path] = typer.Option(None, "--duckdb", metavar="OUT.duckdb", help="A DuckDB copy of every table."),
        min_duration: Optional[str] = typer.Option(None, "--min-duration", metavar="DUR", help="Timeline/OTLP: skip events shorter than this (e.g. 1ms); instants are kept."),
        force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    ) -> None:
        """Export a trace for Perfetto/Chrome, an OpenTelemetry collector, or columnar engines.

        \b
          whyprobe export t.db --perfetto t.pftrace
          whyprobe export t.db --otlp http://127.0.0.1:4318 --min-duration 1ms  # not run here: needs an OTLP collector
          whyprobe export t.db --parquet fleet-parquet/
        """
        from whyprobe.store.reader import open_trace
        from whyprobe.units import UnitError, parse_duration_ns

        targets = {"--perfetto": perfetto, "--chrome": chrome, "--otlp": otlp, "--parquet": parquet, "--duckdb": duckdb}
        chosen = [name for name, value in targets.items() if value is not None]
        if len(chosen) != 1:
            raise CommandError("give exactly one of --perfetto, --chrome, --otlp, --parquet or --duckdb", exit_code=2)
        min_ns = 0
        if min_duration is not None:
            if parquet is not None or duckdb is not None:
                raise CommandError("--min-duration applies to --perfetto, --chrome and --otlp (table copies are complete)", exit_code=2)
            try:
                min_ns = parse_duration_ns(min_duration, bare_unit="ms")
            except UnitError as exc:
                raise UsageError(f"--min-duration {min_duration!r}: {exc}") from None
        out = next(v for v in (perfetto, chrome, parquet, duckdb) if v is not None) if otlp is None else None
        if out is not None:
            from whyprobe.export.files import check_target

            check_target(out, force=force or parquet is not None)
        with open_trace(db) as trace:
            try:
                message = _export(trace, chosen[0], out, otlp, min_ns, force)
            except OSError as exc:
                raise CommandError(f"cannot write {out}: {exc.strerror or exc}") from None
        print(message, file=sys.stderr)


def _export(trace, kind: str, out: Path | None, url: str | None, min_ns: int, force: bool) -> str:
    if kind == "--otlp":
        from whyprobe.export.otlp import send_otlp

        result = send_otlp(trace, url, min_duration_ns=min_ns)
        return (
            f"Sent {result.spans} spans ({result.tool_call_spans} MCP tool calls) and "
            f"{result.histogram_series} duration histograms to {url}"
        )
    if kind == "--parquet":
        from whyprobe.export.parquet import write_parquet

        if out.exists() and not out.is_dir():
            raise CommandError(f"Not a directory: {out}")
        out.mkdir(exist_ok=True)
        rows = write_parquet(trace, out, force=force)
        return f"Wrote {out}/ ({len(rows)} tables, {rows.get('events', 0)} events)"
    if kind == "--duckdb":
        from whyprobe.export.duckdb_backend import copy_into_duckdb
        from whyprobe.export.files import atomic_file

        with atomic_file(out) as tmp:
            rows = copy_into_duckdb(trace, tmp)
        return f"Wrote {out} ({len(rows)} tables, {rows.get('events', 0)} events)"
    from whyprobe.export.files import atomic_file
    from whyprobe.export.perfetto import write_chrome, write_perfetto
    from whyprobe.export.timeline import build_timeline

    timeline = build_timeline(trace, min_duration_ns=min_ns)
    with atomic_file(out) as tmp:
        if kind == "--perfetto":
            with tmp.open("wb") as fh:
                write_perfetto(timeline, fh)
        else:
            write_chrome(timeline, tmp)
    counts = ", ".join(f"{n} {c}" for c, n in sorted(timeline.counts.items()))
    return f"Wrote {out} ({len(timeline.tracks)} tracks; {counts or 'no events'})"
