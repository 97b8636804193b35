"""`whyprobe dashboard` (not built yet)."""

from __future__ import annotations

import typer

from whyprobe.errors import CommandError


def register(app: typer.Typer) -> None:
    @app.command("dashboard")
    def _cmd() -> None:
        """Not built yet."""
        raise CommandError("dashboard is not built yet")
