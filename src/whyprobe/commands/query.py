"""`whyprobe query`: read-only SQL on a trace, or on a fleet of `whyprobe mcp --http` servers."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from whyprobe.errors import CommandError


def register(app: typer.Typer) -> None:
    @app.command("query")
    def query_cmd(
        db: Optional[Path] = typer.Argument(None, help="Trace database (omit with --nodes)."),
        sql: Optional[str] = typer.Argument(None, help="One SELECT statement."),
        json_out: bool = typer.Option(False, "--json", help="JSON rows."),
        csv_out: bool = typer.Option(False, "--csv", help="CSV."),
        max_rows: int = typer.Option(10_000, "--max-rows", help="Row cap (at most 10000)."),
        nodes: str = typer.Option("", "--nodes", help="h1:port,h2:port: ask these whyprobe mcp --http servers instead."),
        timeout: float = typer.Option(10.0, "--timeout", help="Per-node timeout in seconds (--nodes)."),
        token_env: str = typer.Option("WHYPROBE_MCP_TOKEN", "--token-env", help="Env var with the bearer token (--nodes)."),
        ca_file: Optional[Path] = typer.Option(None, "--ca-file", help="CA bundle for https nodes."),
    ) -> None:
        """Run one read-only SQL query (writes are refused by SQLite itself).

        \b
          whyprobe query t.db "SELECT comm, syscall, COUNT(*) AS n FROM host_events GROUP BY 1, 2 ORDER BY n DESC"
          whyprobe query --nodes gpu1:8755,gpu2:8755 "SELECT COUNT(*) FROM events"  # not run here: needs mcp --http servers on gpu1, gpu2
        """
        from whyprobe.reporters.query import render_csv, render_json, render_table

        if json_out and csv_out:
            raise CommandError("choose one of --json and --csv")
        render = render_json if json_out else render_csv if csv_out else render_table
        if not 1 <= max_rows <= 10_000:
            raise CommandError(f"--max-rows must be between 1 and 10000 (got {max_rows})")
        if sql is None and db is not None and nodes:
            sql, db = str(db), None  # `query --nodes X "SQL"`: the only positional is the SQL
        if sql is None:
            raise CommandError("give the SQL to run, e.g. whyprobe query t.db \"SELECT COUNT(*) FROM events\"")
        if nodes:
            if db is not None:
                raise CommandError("give either a database or --nodes, not both")
            from whyprobe.server.fleet import fan_out_sql

            targets = [n.strip() for n in nodes.split(",") if n.strip()]
            res = fan_out_sql(targets, sql, timeout_s=timeout, token=os.environ.get(token_env), ca_file=str(ca_file) if ca_file else None)
            for node, why in res.failed.items():
                print(f"whyprobe: node {node} failed: {why}", file=sys.stderr)
            if not res.ok_nodes:
                raise CommandError(f"all {len(targets)} node(s) failed; no results")
            render(res.columns, res.rows, sys.stdout)
            if res.failed:
                print(f"whyprobe: partial result: {len(res.ok_nodes)}/{len(targets)} nodes answered", file=sys.stderr)
            return
        if db is None:
            raise CommandError("give a trace database or --nodes")
        from whyprobe.store.safesql import SafeOptions, open_safe, run_query

        opts = SafeOptions(max_rows=max_rows, time_limit_ms=60_000, max_output_bytes=1 << 30)
        with open_safe(db, opts) as safe:
            res = run_query(safe, sql, (), opts)
        render(res.columns, res.rows, sys.stdout)
        if res.truncated:
            print(f"whyprobe: truncated: {res.truncated_reason}", file=sys.stderr)
