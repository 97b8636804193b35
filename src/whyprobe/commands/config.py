"""`whyprobe config`: print a commented example config, or check a config file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from whyprobe.errors import CommandError


def register(app: typer.Typer) -> None:
    @app.command("config")
    def _cmd(
        example: bool = typer.Option(False, "--example", help="Print the default config as commented YAML."),
        check: Optional[Path] = typer.Option(None, "--check", metavar="FILE", help="Validate FILE and report the first problem."),
    ) -> None:
        """Print an example config (--example) or validate one (--check FILE).

        \b
          whyprobe config --example > whyprobe.yaml
          whyprobe config --check whyprobe.yaml
        """
        from whyprobe.config import load_config, tool_plan
        from whyprobe.config_example import example_yaml

        if example == (check is not None):
            raise CommandError("give exactly one of --example or --check FILE", exit_code=2)
        from whyprobe.server.app import tool_catalog

        catalog = tool_catalog()
        if example:
            sys.stdout.write(example_yaml(catalog))
            return
        cfg = load_config(check)
        tool_plan(cfg.tools, [name for name, _, _ in catalog])  # tool names are checked against the server's
        print(f"{check}: OK")
