"""`whyprobe merge`: merge per-node databases into one, with a node column and clock correction."""

from __future__ import annotations

from typing import List, Optional

import typer

from whyprobe.errors import CommandError


def _parse_skews(values: list[str]) -> dict[str, int]:
    skews = {}
    for value in values:
        node, sep, ns = value.rpartition("=")
        try:
            skews[node] = int(ns)
        except ValueError:
            node = ""
        if not sep or not node:
            raise CommandError(f"--clock-skew wants NODE=NANOSECONDS (e.g. gpu-node-02=-1500000), got {value!r}", exit_code=2)
    return skews


def _parse_nodes(values: list[str]) -> dict[str, str]:
    nodes = {}
    for value in values:
        db, sep, name = value.rpartition("=")
        if not sep or not db or not name:
            raise CommandError(f"--node wants DB=NAME (e.g. a.db=gpu-node-01), got {value!r}", exit_code=2)
        nodes[db] = name
    return nodes


def register(app: typer.Typer) -> None:
    @app.command("merge")
    def merge(
        dbs: List[str] = typer.Argument(..., metavar="DB...", help="whyprobe or Ingero databases, one per node."),
        out: str = typer.Option(..., "--out", "-o", help="The merged database to write."),
        force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
        clock_skew: Optional[List[str]] = typer.Option(
            None, "--clock-skew", help="NODE=NS: that node's clock minus the reference, subtracted from its timestamps (repeatable)."
        ),
        node: Optional[List[str]] = typer.Option(
            None, "--node", help="DB=NAME: the node of that input, e.g. when two traces come from one host (repeatable)."
        ),
    ) -> None:
        """Merge per-node databases: every event gets its node; timestamps go onto one clock.
        Findings, MCP messages, tool calls and audit rows are kept, with their node.

        \b
          whyprobe merge node-01.db node-02.db node-03.db --out fleet.db
          whyprobe query fleet.db "SELECT node, COUNT(*) FROM events GROUP BY node"
        """
        from whyprobe.store.merge import merge_traces

        summary = merge_traces(
            dbs, out, force=force, clock_skew_ns=_parse_skews(clock_skew or []), node_names=_parse_nodes(node or [])
        )
        for warning in summary["warnings"]:
            typer.echo(f"whyprobe: warning: {warning}", err=True)
        for s in summary["inputs"]:
            skew = f", clock corrected by {s['clock_skew_ns']} ns" if s["clock_skew_ns"] else ""
            typer.echo(f"  {s['path']}: node {s['node']} ({s['node_from']}), {s['events']:,} events{skew}")
        typer.echo(f"Wrote {summary['out']} ({summary['events']:,} events from {len(summary['inputs'])} databases)")
