"""`whyprobe explain`: latency tails and GPU-idle gaps, their kernel causes, blockers and fixes."""

from __future__ import annotations

import re
import sys
from datetime import datetime
from typing import Optional

import typer

from whyprobe.commands.common import check_op
from whyprobe.errors import CommandError, UsageError

_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_OFFSET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)\s*$")
_RAW_NS_MIN = 10**15  # unix ns after 1970-01-12: anything smaller is surely a forgotten unit


def resolve_bound(text: str | None, first_ns: int, option: str) -> int | None:
    """`--since/--until` as an offset into the trace (`10s`, `250ms`), an ISO time, or raw unix ns."""
    if text is None:
        return None
    m = _OFFSET.match(text)
    if m:
        return first_ns + int(round(float(m.group(1)) * _UNITS[m.group(2)]))
    if text.strip().isdigit():
        value = int(text)
        if value < _RAW_NS_MIN:
            raise UsageError(f"{option} {text}: a bare number is read as unix ns; for an offset into the trace add a unit, e.g. {text}s")
        return value
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f"{option} {text!r}: expected an offset into the trace (10s, 500ms, 2m), an ISO time (2026-03-20T14:06:20) or unix ns"
        ) from None
    return int(round(when.timestamp() * 1e9)) if when.tzinfo else int(round(when.astimezone().timestamp() * 1e9))


def _check_window(since: str | None, until: str | None, since_ns: int | None, until_ns: int | None, first: int, last: int) -> None:
    """A window that misses the trace would report "no findings" about time nothing was recorded in."""
    outside = (since_ns is not None and since_ns >= last) or (until_ns is not None and until_ns <= first)
    if outside and last > first:
        asked = " ".join(part for part in (f"--since {since}" if since else "", f"--until {until}" if until else "") if part)
        raise CommandError(f"{asked} is outside the trace, which covers 0s .. {(last - first) / 1e9:.1f}s (from its first event)")


def register(app: typer.Typer) -> None:
    @app.command("explain")
    def explain_cmd(
        db: str = typer.Argument(..., metavar="DB", help="A whyprobe or Ingero database."),
        json_out: bool = typer.Option(False, "--json", help="Print the findings document as JSON."),
        since: Optional[str] = typer.Option(None, "--since", help="Start: offset into the trace (10s), ISO time, or unix ns."),
        until: Optional[str] = typer.Option(None, "--until", help="End: offset into the trace (20s), ISO time, or unix ns."),
        pid: Optional[int] = typer.Option(None, "--pid", help="Only slow calls and gaps of this process."),
        op: Optional[str] = typer.Option(None, "--op", help="Only this op (e.g. cudaLaunchKernel; gpu_idle for gaps)."),
        min_severity: str = typer.Option("low", "--min-severity", help="low, medium or high."),
        no_store: bool = typer.Option(False, "--no-store", help="Do not append the findings to the database's findings table."),
    ) -> None:
        """Why calls were slow and the GPU idle: kernel evidence, blockers and fixes.

        \b
          whyprobe explain t.db
          whyprobe explain t.db --since 500ms --until 1500ms --json
          whyprobe explain t.db --op cudaLaunchKernel --min-severity medium
        """
        from whyprobe.analyze.explain import explain, store_findings
        from whyprobe.errors import StoreError
        from whyprobe.reporters.explain import render_explain_json, render_explain_text
        from whyprobe.store.reader import open_trace

        if min_severity not in ("low", "medium", "high"):
            raise CommandError(f"--min-severity {min_severity!r}: use low, medium or high")
        with open_trace(db) as trace:
            check_op(op, trace, "gpu_idle")
            row = trace.conn.execute("SELECT MIN(timestamp), MAX(timestamp + MAX(duration, 0)) FROM events").fetchone()
            first = int(row[0]) if row and row[0] is not None else 0
            last = int(row[1]) if row and row[1] is not None else 0
            since_ns = resolve_bound(since, first, "--since")
            until_ns = resolve_bound(until, first, "--until")
            if since_ns is not None and until_ns is not None and until_ns <= since_ns:
                raise CommandError(f"--until must be after --since (got {since} .. {until})")
            _check_window(since, until, since_ns, until_ns, first, last)
            doc = explain(trace, since_ns=since_ns, until_ns=until_ns, pid=pid, op=op, min_severity=min_severity)
            flavor = trace.flavor
        if json_out:
            render_explain_json(doc, sys.stdout)
        else:
            render_explain_text(doc, sys.stdout)
        if no_store:
            return
        if flavor != "whyprobe":
            print(f"whyprobe: {db} is an Ingero database; findings not stored (--no-store implied)", file=sys.stderr)
            return
        try:
            added = store_findings(db, doc)
        except StoreError as exc:
            print(f"whyprobe: {exc}", file=sys.stderr)
            return
        print(f"Stored {added} finding(s) in {db} (findings table)", file=sys.stderr)
