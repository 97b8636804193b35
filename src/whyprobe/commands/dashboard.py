"""`whyprobe dashboard DB`: serve a read-only web page over a trace until Ctrl-C."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import typer

from whyprobe.errors import CommandError


def register(app: typer.Typer) -> None:
    @app.command("dashboard")
    def _cmd(
        db: Path = typer.Argument(..., help="Trace database (whyprobe or Ingero)."),
        port: int = typer.Option(8756, "--port", min=0, max=65535, help="TCP port; 0 picks a free one."),
        bind: str = typer.Option("127.0.0.1", "--bind", help="Address to listen on (loopback unless --allow-remote)."),
        allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a non-loopback --bind: anyone who can reach it reads the trace."),
    ) -> None:
        """Local web page: timeline per thread, per-op latency histograms, findings, MCP tool calls.

        \b
          whyprobe dashboard t.db --port 8756      # then open http://127.0.0.1:8756/
        """
        from whyprobe.server.security import is_loopback
        from whyprobe.store.reader import open_trace
        from whyprobe.ui.dashboard.server import make_server

        host = bind.strip("[]")
        if not is_loopback(host) and not allow_remote:
            raise CommandError(
                f"refusing to serve the trace on non-loopback address {bind!r}; use --bind 127.0.0.1, or add --allow-remote if everyone who can reach it may read the trace",
                exit_code=2,
            )
        trace = open_trace(db)
        try:
            try:
                server = make_server(trace, host, port, allow_any_host=not is_loopback(host))
            except OSError as exc:
                raise CommandError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}; pick another --port (0 = any free one)") from None
            previous = signal.signal(signal.SIGTERM, _interrupt)
            print(f"Serving {server.url} (Ctrl-C to stop)", flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                print("Stopped.", file=sys.stderr)
            finally:
                signal.signal(signal.SIGTERM, previous)
                server.server_close()
        finally:
            trace.close()


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM ends the server the way Ctrl-C does: serve_forever unwinds, the socket and DB close.
    raise KeyboardInterrupt
