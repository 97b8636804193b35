"""`whyprobe footprint`: what each MCP tool call did on the host.

An MCP server only works when a client talks to it, so there are two ways in:

* `--pid N`: a server already running under a real client (an agent, an IDE);
  footprint watches it (and its children) until it exits, `--duration`, or
  Ctrl-C.
* `--cmd -- CLIENT ARGS...`: launch the MCP client (an agent, or a script
  using the SDK's stdio client) that itself starts the server as a child; the
  whole tree is traced, and each server is found as the process that answers
  `initialize` / `tools/call`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from whyprobe.errors import CommandError
from whyprobe.commands.common import check_targets, duration_s, message_cap, payload_ring_bytes, stdout_to_stderr
from whyprobe.record.targets import check_out


def register(app: typer.Typer) -> None:
    @app.command("footprint", context_settings={"allow_interspersed_args": False})
    def footprint(
        pid: List[int] = typer.Option([], "--pid", help="An MCP server already in use by a client (repeatable)."),
        cmd: bool = typer.Option(False, "--cmd", help="Launch the MCP client given after `--`; it starts the server."),
        out: Path = typer.Option(Path("footprint.db"), "--out", "-o", help="Database to write (tool_calls, tool_call_events, events)."),
        duration: Optional[str] = typer.Option(None, "--duration", help="Stop after this long (30s, 5m)."),
        max_message: str = typer.Option("1MiB", "--max-message", help="Bytes captured per read/write call."),
        no_tls: bool = typer.Option(False, "--no-tls", help="Don't probe OpenSSL (TLS plaintext)."),
        json_out: bool = typer.Option(False, "--json", help="Print the footprints as JSON."),
        force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
        args: List[str] = typer.Argument(None, help="The MCP client command (after --cmd --)."),
    ) -> None:
        """Per MCP tool call: syscalls, files, endpoints, children, libraries, CPU of the server's tree.

        \b
          sudo whyprobe footprint --cmd -- python my_agent.py        # the agent starts the server
          sudo whyprobe footprint --pid $(pgrep -f mcp-server-git) --duration 60s
          whyprobe query footprint.db "SELECT tool_name, duration, files FROM tool_calls"
        """

        args = list(args or [])
        if not pid and not args:
            raise CommandError(
                "footprint needs a server to watch: --pid N of a server in use by a client, "
                "or --cmd -- CLIENT ARGS (a client that starts the server)"
            )
        seconds = duration_s(duration)
        cap = message_cap(max_message)
        check_targets(pid, cmd, args, "footprint")
        check_out(out, force)
        _footprint(out, list(pid), args, seconds, cap, not no_tls, json_out, force)


def _footprint(out: Path, pids: list[int], args: list[str], seconds, cap: int, tls: bool, json_out: bool, force: bool) -> None:
    import os

    import orjson
    from rich.console import Console

    from whyprobe.analyze import footprint as fp
    from whyprobe.errors import WhyprobeError
    from whyprobe.probes.base import TargetSpec
    from whyprobe.probes.cuda import CudaFamily
    from whyprobe.probes.host import BlockFamily, ProcFamily, SchedFamily, SyscallsFamily
    from whyprobe.record.capture import capture, remove_db, session_argv
    from whyprobe.record.session import TraceOptions
    from whyprobe.record.wire import WireRecorder
    from whyprobe.reporters import footprint as reporter

    if force:
        remove_db(out)
    recorder = WireRecorder(max_message_bytes=cap, tls=tls, ignore_pids={os.getpid()})
    # CUDA libraries a server maps (now or by dlopen) are attached by the family's maps rescan.
    families = [ProcFamily(), SchedFamily(), SyscallsFamily(emit_all=True), BlockFamily(), CudaFamily([]), recorder]
    options = TraceOptions(payload_ring_bytes=payload_ring_bytes(cap), session_fields={"argv": session_argv()})
    try:
        with stdout_to_stderr(json_out):
            result = capture(out, families, TargetSpec(pids=pids), options, args, seconds)
    except WhyprobeError as exc:
        raise CommandError(str(exc)) from None
    calls = fp.analyze_and_store(out, {cid: c.handler_tid for cid, c in recorder.calls})
    servers = {s.server_pid: s.server_name or "" for s in recorder.pipeline.sessions if s.server_pid}
    if json_out:
        doc = reporter.to_json(calls)
        doc.update(out=str(out), servers={str(k): v for k, v in servers.items()},
                   command_exit_status=result.command_status, dropped=result.summary.dropped)
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        return
    console = Console(file=sys.stdout)
    if not console.is_terminal:
        console.width = 160  # piped: rich would fold the table at 80 columns
    reporter.render(console, calls, servers=servers)
    err = Console(stderr=True, highlight=False)
    if result.summary.dropped:
        err.print(f"[yellow]warning:[/yellow] {result.summary.dropped:,} events dropped: footprints may be incomplete")
    err.print(f"Wrote {out} ({len(calls)} tool calls)")
