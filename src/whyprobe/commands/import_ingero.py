"""`whyprobe import-ingero` (not built yet)."""

from __future__ import annotations

import typer

from whyprobe.errors import CommandError


def register(app: typer.Typer) -> None:
    @app.command("import-ingero")
    def _cmd() -> None:
        """Not built yet."""
        raise CommandError("import-ingero is not built yet")
