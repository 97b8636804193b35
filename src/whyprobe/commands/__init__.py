"""The `whyprobe` CLI: one module per subcommand, one registry, one error boundary.

A new command is one module in this package defining ``register(app)`` plus one
name in ``COMMANDS``. Tests call ``main([...])`` and get the exit code back.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Sequence

import click
import typer

from whyprobe.errors import WhyprobeError, CommandError

COMMANDS = (
    "check",
    "trace",
    "stats",
    "explain",
    "query",
    "stacks",
    "mcp",
    "spy",
    "footprint",
    "export",
    "merge",
    "import_ingero",
    "demo",
    "config",
    "dashboard",
)

_DESCRIPTION = """Explains why things are slow, from kernel evidence (eBPF).

  sudo whyprobe trace --cmd -- python train.py --out t.db
  whyprobe explain t.db
"""


def _verbosity(verbose: int = typer.Option(0, "-v", "--verbose", count=True, help="More logging (-v, -vv, -vvv).")) -> None:
    level = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="whyprobe",
        help=_DESCRIPTION,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        callback=_verbosity,
    )
    for name in COMMANDS:
        importlib.import_module(f"whyprobe.commands.{name}").register(app)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; expected failures become one line on stderr and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = build_app()(args=args, prog_name="whyprobe", standalone_mode=False)
    except CommandError as exc:
        print(f"whyprobe: {exc}", file=sys.stderr)
        return exc.exit_code
    except WhyprobeError as exc:
        print(f"whyprobe: {exc}", file=sys.stderr)
        return 1
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show(file=sys.stderr)
        return exc.exit_code
    except click.exceptions.Abort:
        print("whyprobe: aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return result if isinstance(result, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
