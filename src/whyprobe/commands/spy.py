"""`whyprobe spy` (not built yet)."""

from __future__ import annotations

import typer

from whyprobe.errors import CommandError


def register(app: typer.Typer) -> None:
    @app.command("spy")
    def _cmd() -> None:
        """Not built yet."""
        raise CommandError("spy is not built yet")
