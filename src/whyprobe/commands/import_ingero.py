"""`whyprobe import-ingero`: convert an Ingero database into a whyprobe database."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("import-ingero")
    def import_ingero(
        db: str = typer.Argument(..., metavar="DB", help="The Ingero database to convert."),
        out: Optional[str] = typer.Option(None, "--out", "-o", help="Output database (default: <DB stem>.whyprobe.db here)."),
        force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
    ) -> None:
        """Convert an Ingero database (explain/stats/query also read Ingero files directly).

        \b
          whyprobe import-ingero ingero.db --out trace.db
          whyprobe explain trace.db
        """
        from pathlib import Path

        from whyprobe.store.ingero import import_ingero as convert

        target = out or f"{Path(db).stem}.whyprobe.db"
        summary = convert(db, target, force=force)
        typer.echo(
            f"Wrote {summary['out']} ({summary['events']:,} events, {summary['sessions']} session(s), "
            f"{summary['causal_chains']} Ingero causal chains kept as ingero_causal_chains)"
        )
