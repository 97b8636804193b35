"""The live view of `whyprobe trace`: per-op table, drops, elapsed, targets.

It only reads immutable snapshots published by the trace's reader thread
(record/session.py), so a slow terminal can never slow the drain.
"""

from __future__ import annotations

from typing import Callable

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from whyprobe.record.details import drops_where
from whyprobe.record.session import Snapshot
from whyprobe.units import fmt_ns

REFRESH_PER_SECOND = 4
MAX_ROWS = 25


def _latency(ns: float) -> str:
    return fmt_ns(ns) if ns > 0 else "-"


def render_snapshot(snap: Snapshot, out: str) -> Group:
    table = Table(title=f"whyprobe trace → {out}", expand=False)
    for col, justify in (("op", "left"), ("count", "right"), ("rate/s", "right"), ("p50", "right"), ("p99", "right"), ("errors", "right")):
        table.add_column(col, justify=justify)
    for op in snap.ops[:MAX_ROWS]:
        table.add_row(op.name, f"{op.count:,}", f"{op.rate:,.0f}", _latency(op.p50_ns), _latency(op.p99_ns), f"{op.errors:,}" if op.errors else "")
    if not snap.ops:
        table.add_row("[dim]waiting for events[/dim]", "", "", "", "", "")
    d = snap.drops
    dropped = sum(d.get(k, 0) for k in ("ring", "rate", "queue"))
    line = f"events dropped: ring {d.get('ring', 0):,}  rate {d.get('rate', 0):,}  queue {d.get('queue', 0):,}"
    where = drops_where(d.get("by_family", {}), d.get("by_cpu", {}), "events")
    line += f" ({where})" if where else ""
    drops = Text(line, style="red" if dropped else "green")
    if d.get("payload", 0):
        where = drops_where(d.get("by_family", {}), d.get("by_cpu", {}), "payloads")
        drops.append(f"\npayloads lost: {d['payload']:,} ({where}); {d.get('details_lost', 0):,} events stored without detail", style="yellow")
    targets = ", ".join(map(str, snap.targets[:10])) + (" …" if len(snap.targets) > 10 else "")
    status = Text(f"elapsed {snap.elapsed_s:,.1f} s   events {snap.events:,}   targets {targets or 'all'}   (Ctrl-C to stop)")
    return Group(table, drops, status)


class LiveView:
    """Context manager: rich Live refreshing at most 4x/s from `get_snapshot()`."""

    def __init__(self, get_snapshot: Callable[[], Snapshot], out: str, console: Console) -> None:
        self._live = Live(
            get_renderable=lambda: render_snapshot(get_snapshot(), out),
            console=console,
            refresh_per_second=REFRESH_PER_SECOND,
            transient=False,
        )

    def __enter__(self) -> "LiveView":
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(None, None, None)
