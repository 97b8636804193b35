"""`whyprobe explain` (not built yet)."""

from __future__ import annotations

import typer

from whyprobe.errors import CommandError


def register(app: typer.Typer) -> None:
    @app.command("explain")
    def _cmd() -> None:
        """Not built yet."""
        raise CommandError("explain is not built yet")
