"""`whyprobe demo` (not built yet)."""

from __future__ import annotations

import typer

from whyprobe.errors import CommandError


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def _cmd() -> None:
        """Not built yet."""
        raise CommandError("demo is not built yet")
