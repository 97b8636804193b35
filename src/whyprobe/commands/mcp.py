"""`whyprobe mcp`: serve a trace read-only to AI agents over MCP (stdio or streamable HTTP)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from whyprobe.errors import CommandError


def register(app: typer.Typer) -> None:
    @app.command("mcp")
    def mcp_cmd(
        db: Path = typer.Option(..., "--db", help="Trace database to serve (whyprobe or Ingero)."),
        http: bool = typer.Option(False, "--http", help="Serve streamable HTTP instead of stdio."),
        bind: str = typer.Option("127.0.0.1:8755", "--bind", help="HOST:PORT for --http (off loopback needs a token)."),
        pid: list[int] = typer.Option([], "--pid", help="Only these processes' events are visible (repeatable)."),
        cgroup: list[int] = typer.Option([], "--cgroup", help="Only these cgroup ids' events are visible (repeatable)."),
        token_env: str = typer.Option("WHYPROBE_MCP_TOKEN", "--token-env", help="Env var holding the bearer token."),
        tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="TLS certificate (PEM) for --http."),
        tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="TLS private key (PEM) for --http."),
        rate_limit: float = typer.Option(100.0, "--rate-limit", help="Requests per second per client."),
        max_rows: int = typer.Option(1000, "--max-rows", help="Row cap for run_sql (at most 10000)."),
        audit: Optional[Path] = typer.Option(None, "--audit", help="Audit log DB (default <db>.audit.sqlite)."),
        nodes: str = typer.Option("", "--nodes", help="h1:port,h2:port for the query_fleet tool."),
        junit: Optional[Path] = typer.Option(None, "--junit", help="JUnit XML for get_test_report."),
    ) -> None:
        """Serve a trace to AI agents over MCP, read-only (stdio by default).

        \b
          whyprobe mcp --db t.db
          WHYPROBE_MCP_TOKEN=s3cret whyprobe mcp --db t.db --http --bind 0.0.0.0:8755
        """
        from pydantic import ValidationError

        from whyprobe.server.security import SecuritySettings

        try:
            settings = SecuritySettings(
                pid_filter=pid, cgroup_filter=cgroup, token_env=token_env, tls_cert=tls_cert, tls_key=tls_key,
                rate_limit_per_second=rate_limit, max_rows=max_rows, bind=bind, audit_path=audit, junit_path=junit,
            )
        except ValidationError as exc:
            raise CommandError(f"bad option: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
        serve(db, settings, http=http, nodes=[n for n in nodes.split(",") if n])


def serve(db: Path, settings, *, http: bool, nodes: list[str]) -> None:
    """Validate everything first (so a bad setup fails with one line), then serve until stopped."""
    from whyprobe.server.app import build_server, serve_http
    from whyprobe.server.security import AuditLog, default_audit_path, parse_bind, required_token
    from whyprobe.server.tools import ServerState
    from whyprobe.store.reader import open_trace

    open_trace(db).close()  # StoreError with one clear line for a missing/corrupt file
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise CommandError("TLS needs both --tls-cert and --tls-key")
    for p in (settings.tls_cert, settings.tls_key):
        if p is not None and not p.is_file():
            raise CommandError(f"No such file: {p}")
    host = port = token = None
    if http:
        host, port = parse_bind(settings.bind)
        token = required_token(settings, host)
    audit_path = settings.audit_path or default_audit_path(db)
    try:
        audit = AuditLog(audit_path)
    except Exception as exc:
        raise CommandError(f"cannot write the audit log at {audit_path}: {exc}; pass --audit PATH") from None
    state = ServerState(db, settings, audit_path=audit_path, fleet_nodes=nodes)
    mcp = build_server(state, audit)
    import threading

    from whyprobe.server.tools import warm_up

    threading.Thread(target=warm_up, args=(state,), name="whyprobe-warm-up", daemon=True).start()
    print(f"whyprobe mcp: serving {db} ({'http' if http else 'stdio'}); audit log {audit_path}", file=sys.stderr)
    try:
        if http:
            serve_http(mcp, host, port, token, settings.tls_cert, settings.tls_key)
        else:
            mcp.run("stdio")
    finally:
        audit.close()
