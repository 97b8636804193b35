"""`whyprobe config` (not built yet)."""

from __future__ import annotations

import typer

from whyprobe.errors import CommandError


def register(app: typer.Typer) -> None:
    @app.command("config")
    def _cmd() -> None:
        """Not built yet."""
        raise CommandError("config is not built yet")
