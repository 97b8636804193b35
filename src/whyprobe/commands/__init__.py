"""The `whyprobe` CLI: one module per subcommand, one registry, one error boundary.

A new command is one module in this package defining ``register(app)`` plus one
name in ``COMMANDS``. Tests call ``main([...])`` and get the exit code back.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Sequence

import typer

# typer 0.29 vendors click as typer._click: its usage errors are not the `click` package's classes.
from typer._click import exceptions as click_errors

from whyprobe import __version__
from whyprobe.errors import WhyprobeError, CommandError, UsageError

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

\b
  sudo whyprobe trace --out t.db --cmd -- python train.py
  whyprobe explain t.db
"""


def _print_version(value: bool) -> None:
    if value:
        print(f"whyprobe {__version__}")
        raise typer.Exit()


def _verbosity(
    verbose: int = typer.Option(0, "-v", "--verbose", count=True, help="More logging (-v, -vv, -vvv)."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
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
    except UsageError as exc:
        print(f"whyprobe: {with_hint(str(exc), _command_path(args))}", file=sys.stderr)
        return exc.exit_code
    except CommandError as exc:
        print(f"whyprobe: {exc}", file=sys.stderr)
        return exc.exit_code
    except WhyprobeError as exc:
        print(f"whyprobe: {exc}", file=sys.stderr)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except click_errors.NoArgsIsHelpError as exc:
        exc.show(file=sys.stderr)
        return exc.exit_code
    except click_errors.UsageError as exc:
        print(f"whyprobe: {usage_line(exc, args)}", file=sys.stderr)
        return exc.exit_code
    except click_errors.ClickException as exc:
        print(f"whyprobe: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except typer.Abort:
        print("whyprobe: aborted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return result if isinstance(result, int) else 0


def usage_line(exc: click_errors.UsageError, args: Sequence[str]) -> str:
    """A command-line mistake as one line: what is wrong, then where the usage is."""
    message = exc.format_message()
    pid_value = _pid_without_value(args)
    if pid_value is not None:
        # `--pid $(pgrep -f name)` with no match leaves --pid empty or eating the next option.
        message = f"--pid got {pid_value}: no process matched (is the program running? check the pgrep pattern)"
    return with_hint(message, exc.ctx.command_path if exc.ctx is not None else _command_path(args))


def with_hint(message: str, command_path: str) -> str:
    end = "" if message.endswith((".", "?", "!")) else "."
    return f"{message}{end} Try '{command_path} --help'."


def _command_path(args: Sequence[str]) -> str:
    names = {name.replace("_", "-") for name in COMMANDS}
    command = next((a for a in args if not a.startswith("-")), None)
    return f"whyprobe {command}" if command in names else "whyprobe"


def _pid_without_value(args: Sequence[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg == "--":
            return None
        if arg == "--pid":
            following = args[i + 1] if i + 1 < len(args) else None
            if following is None:
                return "no value"
            if following.startswith("-"):
                return f"no value (next came {following})"
    return None


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
