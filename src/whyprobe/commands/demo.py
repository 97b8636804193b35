"""`whyprobe demo`: a bundled workload traced for real and explained, or a replay of one where tracing can't work."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer

from whyprobe.errors import CommandError, UsageError, WhyprobeError


def _default_out(name: str) -> Path:
    """./whyprobe-demo-<name>.db, or the same name in a new temp directory when . is not writable."""
    if os.access(".", os.W_OK | os.X_OK):
        return Path(f"whyprobe-demo-{name}.db")
    return Path(tempfile.mkdtemp(prefix="whyprobe-demo-")) / f"whyprobe-demo-{name}.db"


def _list(out) -> None:
    from whyprobe.demo import scenarios

    width = max(map(len, scenarios.SCENARIOS))
    for name, s in scenarios.SCENARIOS.items():
        mark = " (default)" if name == scenarios.DEFAULT else ""
        out.write(f"{name:<{width}}  {s.description}{mark}\n")


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        scenario: Optional[str] = typer.Argument(None, metavar="[SCENARIO]", help="Which scenario (see --list); default cpu-contention."),
        list_: bool = typer.Option(False, "--list", help="List the scenarios with one line each."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Database to write (default ./whyprobe-demo-SCENARIO.db)."),
        force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
        duration: str = typer.Option("4s", "--duration", help="How long the workload runs when traced live."),
        replay: bool = typer.Option(False, "--replay", help="Replay the recording even where live tracing works."),
    ) -> None:
        """Trace a bundled workload for real and explain it (replays a recording without root/eBPF).

        \b
          sudo whyprobe demo                      # cpu-contention: a hog steals the training loop's core
          sudo whyprobe demo dataloader-starvation
          whyprobe demo --list
        """
        from whyprobe.demo import scenarios
        from whyprobe.units import UnitError, parse_duration_ns

        if list_:
            _list(sys.stdout)
            return
        sc = scenarios.get(scenario or scenarios.DEFAULT)
        try:
            seconds = parse_duration_ns(duration) / 1e9
        except UnitError as exc:
            raise UsageError(f"--duration {duration!r}: {exc}") from None
        if not 0.5 <= seconds <= 600:
            raise CommandError(f"--duration {duration}: use between 500ms and 10m")
        path = out if out is not None else _default_out(sc.name)
        # The default output is the demo's own file: running the demo again replaces it.
        overwrite = force or out is None
        try:
            scenarios.check_out(path, overwrite)
        except WhyprobeError as exc:
            raise CommandError(str(exc)) from None
        reason = "--replay asked for it" if replay else scenarios.tracing_unavailable()
        try:
            if reason is None:
                _run_live(sc, path, seconds, overwrite)
            else:
                scenarios.run_replay(sc.name, path, force=overwrite)
                why = "Replaying as asked (--replay):" if replay else f"No eBPF here ({reason}): replaying"
                print(f"{why} a recording of {sc.name} made on {scenarios.origin(path)}")
                print(f"Wrote {path} (replay of a recorded run)")
        except CommandError:
            raise
        except WhyprobeError as exc:
            raise CommandError(str(exc)) from None
        _show(sc, path, live=reason is None)


def _run_live(sc, path: Path, seconds: float, overwrite: bool) -> None:
    from rich.console import Console

    from whyprobe.demo import scenarios

    print(f"whyprobe demo {sc.name}: {sc.description}")
    if sc.kind == "footprint":
        print("Running the MCP client under `whyprobe footprint --cmd`; the client starts the server ...")
    else:
        print(f"Tracing train_loop on the stand-in CUDA runtime for {seconds:g} s (probes: {', '.join(scenarios.PROBES)}) ...")
    sys.stdout.flush()
    facts = scenarios.record(sc.name, path, console=Console(stderr=True), duration_s=seconds, force=overwrite)
    if sc.kind != "footprint":  # footprint has said where it wrote
        print(f"Wrote {path} ({facts.events:,} events, {facts.dropped:,} dropped)")


def _show(sc, path: Path, live: bool) -> None:
    """The scenario's result: explain's findings, or (mcp-tool) the footprint table and the wire
    exchange; then whether it says what the scenario expects, and what to run next."""
    from whyprobe.demo import scenarios

    if sc.kind == "footprint":
        doc = _show_footprint(path, live)
        follow = f"whyprobe query {path} \"SELECT tool_name, duration, files FROM tool_calls\"   whyprobe mcp --db {path}"
    else:
        doc = _show_explain(sc, path)
        follow = f"whyprobe explain {path}   whyprobe stats {path}   whyprobe mcp --db {path}"
    problems = sc.verdict(doc)
    print()
    if problems:
        print(f"Expected {sc.expect}; not found: {'; '.join(problems)}")
    else:
        print(f"Expected {sc.expect}: found.")
    print(f"Next: {follow}")
    others = [n for n in scenarios.SCENARIOS if n != sc.name]
    print(f"Other scenarios: {', '.join(others)} (whyprobe demo --list)")


def _show_explain(sc, path: Path) -> dict:
    from whyprobe.demo import scenarios
    from whyprobe.reporters.explain import render_explain_text

    doc = scenarios.document(sc.name, path)
    print()
    render_explain_text(doc, sys.stdout)
    return doc


def _show_footprint(path: Path, live: bool) -> dict:
    from rich.console import Console

    from whyprobe.demo.scenarios import mcp
    from whyprobe.reporters import footprint as reporter

    calls = mcp.footprints(path)
    if not live:  # live, `whyprobe footprint` has printed the table already
        console = Console(file=sys.stdout)
        if not console.is_terminal:
            console.width = 160
        reporter.render(console, calls)
    print("\nThe JSON-RPC exchange on the wire (what `whyprobe spy` shows live):")
    for line in mcp.traffic(path):
        print(line)
    return reporter.to_json(calls)
