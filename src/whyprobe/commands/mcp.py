"""`whyprobe mcp`: serve a trace read-only to AI agents over MCP (stdio or streamable HTTP)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Optional

import typer

from whyprobe.errors import CommandError


def register(app: typer.Typer) -> None:
    @app.command("mcp")
    def mcp_cmd(
        db: Path = typer.Option(..., "--db", help="Trace database to serve (whyprobe or Ingero)."),
        http: Optional[bool] = typer.Option(None, "--http/--stdio", help="Serve streamable HTTP or stdio (default: server.transport of --config, else stdio)."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML config file: server, tools and security sections."),
        bind: Optional[str] = typer.Option(None, "--bind", help="HOST:PORT for --http (off loopback needs a token; default 127.0.0.1:8755)."),
        pid: list[int] = typer.Option([], "--pid", help="Only these processes' events are visible (repeatable)."),
        cgroup: list[int] = typer.Option([], "--cgroup", help="Only these cgroup ids' events are visible (repeatable)."),
        token_env: Optional[str] = typer.Option(None, "--token-env", help="Env var holding the bearer token (default WHYPROBE_MCP_TOKEN)."),
        tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="TLS certificate (PEM) for --http."),
        tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="TLS private key (PEM) for --http."),
        rate_limit: Optional[float] = typer.Option(None, "--rate-limit", help="Requests per second per client (default 100)."),
        max_rows: Optional[int] = typer.Option(None, "--max-rows", help="Row cap for run_sql (at most 10000; default 1000)."),
        audit: Optional[Path] = typer.Option(None, "--audit", help="Audit log DB (default <db>.audit.sqlite)."),
        nodes: str = typer.Option("", "--nodes", help="h1:port,h2:port for the query_fleet tool."),
        junit: Optional[Path] = typer.Option(None, "--junit", help="JUnit XML for get_test_report."),
    ) -> None:
        """Serve a trace to AI agents over MCP, read-only (stdio by default).

        Command-line options win over the --config file, which wins over the defaults.

        \b
          whyprobe mcp --db t.db
          whyprobe mcp --db t.db --config whyprobe.yaml
          WHYPROBE_MCP_TOKEN=s3cret whyprobe mcp --db t.db --http --bind 0.0.0.0:8755
        """
        from pydantic import ValidationError

        from whyprobe.config import load_config
        from whyprobe.server.security import SecuritySettings

        cfg = load_config(config)
        kwargs = cfg.security.settings_kwargs()
        given = {
            "pid_filter": pid or None, "cgroup_filter": cgroup or None, "token_env": token_env, "tls_cert": tls_cert, "tls_key": tls_key,
            "rate_limit_per_second": rate_limit, "max_rows": max_rows, "bind": bind, "audit_path": audit, "junit_path": junit,
        }
        kwargs.update({k: v for k, v in given.items() if v is not None})
        if not pid and cfg.security.pid_filtering is True:
            kwargs["pid_filter"] = traced_pids(db)
        try:
            settings = SecuritySettings(**kwargs)
        except ValidationError as exc:
            raise CommandError(f"bad option: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
        transport_http = http if http is not None else cfg.server.transport == "http"
        serve(db, settings, http=transport_http, nodes=[n for n in nodes.split(",") if n], config=cfg if config else None)


def traced_pids(db: Path) -> list[int]:
    """`security.pid_filtering: true`: the processes the trace targeted and their descendants.

    Empty (no filter) when a session traced every process (`--all`) or recorded no targets.
    """
    from whyprobe.store.reader import open_trace

    trace = open_trace(db)
    try:
        q = trace.conn.execute
        if not trace.has("sessions", "pid_filter"):
            return []
        pids: set[int] = set()
        for (text,) in q("SELECT pid_filter FROM sessions"):
            if not text or text == "all":
                return []
            pids.update(int(p) for p in text.split(",") if p.strip().isdigit())
        if trace.has("process_names", "ppid"):
            children: dict[int, list[int]] = {}
            for child, parent in q("SELECT pid, ppid FROM process_names"):
                children.setdefault(parent, []).append(child)
            todo = list(pids)
            while todo:
                for child in children.get(todo.pop(), ()):
                    if child not in pids:
                        pids.add(child)
                        todo.append(child)
        return sorted(pids)
    finally:
        trace.close()


def serve(db: Path, settings, *, http: bool, nodes: list[str], config=None) -> None:
    """Validate everything first (so a bad setup fails with one line), then serve until stopped."""
    from whyprobe.config import tool_plan
    from whyprobe.server.app import build_server, serve_http, tool_catalog
    from whyprobe.server.security import AuditLog, default_audit_path, parse_bind, required_token
    from whyprobe.server.tools import ServerState
    from whyprobe.store.reader import open_trace

    open_trace(db).close()  # StoreError with one clear line for a missing/corrupt file
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise CommandError("TLS needs both --tls-cert and --tls-key")
    for p in (settings.tls_cert, settings.tls_key):
        if p is not None and not p.is_file():
            raise CommandError(f"No such file: {p}")
    server = {}
    if config is not None:
        plan = tool_plan(config.tools, [name for name, _, _ in tool_catalog()])
        server = {"name": config.server.name, "version": config.server.version, "tools": plan}
    host = port = token = None
    if http:
        host, port = parse_bind(settings.bind)
        token = required_token(settings, host)
    audit_path = settings.audit_path or default_audit_path(db)
    try:
        audit = AuditLog(audit_path)
    except (OSError, sqlite3.Error) as exc:
        raise CommandError(f"cannot write the audit log at {audit_path}: {exc}; pass --audit PATH") from None
    state = ServerState(db, settings, audit_path=audit_path, fleet_nodes=nodes)
    mcp = build_server(state, audit, **server)
    import threading

    from whyprobe.server.tools import warm_up

    stop_warming = threading.Event()
    warming = threading.Thread(target=warm_up, args=(state, stop_warming), name="whyprobe-warm-up")
    warming.start()
    print(f"whyprobe mcp: serving {db} ({'http' if http else 'stdio'}); audit log {audit_path}", file=sys.stderr)
    try:
        if http:
            serve_http(mcp, host, port, token, settings.tls_cert, settings.tls_key, audit)
        else:
            mcp.run("stdio")
    finally:
        # The warm-up ends before the interpreter does: numpy running in a daemon thread while the
        # interpreter finalizes crashed the server (SIGSEGV) when a client left during the warm-up.
        stop_warming.set()
        warming.join()
        audit.close()
