"""`whyprobe spy`: watch the JSON-RPC that MCP clients and servers exchange on this host.

No proxy, no change to either side: the wire family reads the bytes of
enrolled processes' pipes, sockets and OpenSSL calls in the kernel. Targets:
`--pid` (and their children), `--cmd -- ARGS` (launch and watch the tree), or
by default every process whose traffic starts like JSON-RPC or HTTP.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from whyprobe.errors import CommandError
from whyprobe.commands.common import check_targets, duration_s, message_cap, payload_ring_bytes, stdout_to_stderr
from whyprobe.record.targets import check_out


def tool_flags(snapshots: list) -> list[dict]:
    """Tools whose description or schema text matches a prompt-injection pattern, with evidence:
    one entry per (server, tool), each finding once however often tools/list returned it."""
    tools: dict[tuple[str, str], dict[tuple, dict]] = {}
    for s in snapshots:
        for f in s.flags:
            d = f.to_dict()
            tools.setdefault((s.server, s.tool_name), {}).setdefault(tuple(sorted((k, str(v)) for k, v in d.items())), d)
    return [{"server": server, "tool_name": name, "flags": list(flags.values())} for (server, name), flags in tools.items()]


def report_tools(console, drifts: list, flagged: list[dict]) -> None:
    for d in drifts:
        console.print(f"[bold yellow]drift[/bold yellow] {d.server} tool {d.tool_name}: {d.change} changed", highlight=False)
        if d.before is not None:
            console.print(f"  before: {d.before[:300]!r}", highlight=False)
        if d.after is not None:
            console.print(f"  after:  {d.after[:300]!r}", highlight=False)
    for t in flagged:
        for f in t["flags"]:
            console.print(
                f"[bold red]suspicious[/bold red] {t['server']} tool {t['tool_name']}: {f['rule']} ({f['severity']}): {f['evidence']!r}",
                highlight=False,
            )


def register(app: typer.Typer) -> None:
    @app.command("spy", context_settings={"allow_interspersed_args": False})
    def spy(
        pid: List[int] = typer.Option([], "--pid", help="Watch this process and its children (repeatable)."),
        cmd: bool = typer.Option(False, "--cmd", help="Launch the command after `--` and watch its process tree."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also record messages into this database (mcp_messages)."),
        jsonl: Optional[Path] = typer.Option(None, "--jsonl", help="Write one JSON object per message to this file."),
        max_message: str = typer.Option("1MiB", "--max-message", help="Bytes captured per read/write call; beyond: marked truncated."),
        duration: Optional[str] = typer.Option(None, "--duration", help="Stop after this long (30s, 5m)."),
        baseline: Optional[Path] = typer.Option(None, "--baseline", help="Report tool description drift against this database's snapshots."),
        pairs: bool = typer.Option(False, "--pairs", help="One line per request/response pair instead of per message."),
        no_tls: bool = typer.Option(False, "--no-tls", help="Don't probe OpenSSL (TLS plaintext)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-message lines."),
        json_out: bool = typer.Option(False, "--json", help="Print a JSON summary at exit instead of the console view."),
        force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists (default: append to it)."),
        args: List[str] = typer.Argument(None, help="The command to launch (after --cmd --)."),
    ) -> None:
        """Watch MCP JSON-RPC traffic (stdio, unix sockets, HTTP, TLS) with no proxy.

        \b
          sudo whyprobe spy                                  # every MCP-looking process
          sudo whyprobe spy --pid $(pgrep -f mcp-server-git) --jsonl mcp.jsonl
          sudo whyprobe spy --out mcp.db --cmd -- python agent.py
        """
        args = list(args or [])
        seconds = duration_s(duration)
        cap = message_cap(max_message)
        check_targets(pid, cmd, args, "spy")
        if baseline is not None and not baseline.is_file():
            raise CommandError(f"No such baseline database: {baseline}")
        if out is not None:
            if force:
                from whyprobe.record.capture import remove_db

                check_out(out, True)
                remove_db(out)
            elif out.exists():
                check_out(out, True)  # directory / permission checks; an existing trace is appended to
        if jsonl is not None and (jsonl.is_dir() or not (jsonl.parent if str(jsonl.parent) else Path(".")).is_dir()):
            raise CommandError(f"Cannot write JSONL: {jsonl} (no such directory or it is a directory)")
        _spy(out, jsonl, cap, seconds, baseline, pairs, not no_tls, quiet, json_out, list(pid), args)


def _spy(out, jsonl, cap, seconds, baseline, pairs, tls, quiet, json_out, pids, args) -> None:
    import orjson
    from rich.console import Console

    from whyprobe.errors import WhyprobeError
    from whyprobe.probes.base import TargetSpec
    from whyprobe.probes.host import ProcFamily
    from whyprobe.record.capture import capture, remove_db, scratch_db, session_argv
    from whyprobe.record.session import TraceOptions
    from whyprobe.record.wire import WireRecorder, existing_state
    from whyprobe.reporters.spy import SpyReporter

    console = Console(file=sys.stdout, highlight=False)
    id_base, call_base, previous = existing_state(out) if out is not None else (0, 0, [])
    if baseline is not None:
        previous = existing_state(baseline)[2]
    view = None if (quiet or json_out) else SpyReporter(console, pairs=pairs)
    stream = open(jsonl, "w") if jsonl is not None else None
    auto = not pids and not args
    recorder = WireRecorder(
        max_message_bytes=cap, sniff=auto, tls=tls, store=out is not None, jsonl=stream,
        on_message=view.render if view else None, previous_snapshots=previous,
        id_base=id_base, call_base=call_base, ignore_pids={os.getpid()},
    )
    db = out if out is not None else scratch_db()
    options = TraceOptions(payload_ring_bytes=payload_ring_bytes(cap), session_fields={"argv": session_argv()})
    try:
        with stdout_to_stderr(json_out):
            result = capture(db, [ProcFamily(), recorder], TargetSpec(pids=pids), options, args, seconds, until_idle=not auto)
    except WhyprobeError as exc:
        raise CommandError(str(exc)) from None
    finally:
        if stream is not None:
            stream.close()
        if out is None:
            remove_db(db)
    if view is not None:
        view.finish()
    stats = recorder.pipeline.stats
    flagged = tool_flags(recorder.snapshots)
    if json_out:
        doc = {
            "messages": stats.messages, "tool_calls": len(recorder.calls), "truncated": stats.truncated,
            "lost_bytes": stats.lost_bytes, "unpaired_responses": stats.unpaired_responses, "by_kind": stats.by_kind,
            "drift": [d.to_dict() for d in recorder.drifts], "flagged_tools": flagged,
            "sessions": [{"transport": s.transport, "protocol_version": s.protocol_version, "server": s.server_name,
                          "client_pid": s.client_pid, "server_pid": s.server_pid} for s in recorder.pipeline.sessions],
            "tls_libraries": recorder.family.tls_libraries, "out": str(out) if out else None,
            "jsonl": str(jsonl) if jsonl else None, "command_exit_status": result.command_status,
            "dropped": result.summary.dropped,
        }
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        return
    err = Console(stderr=True, highlight=False)
    report_tools(err, recorder.drifts, flagged)
    line = f"{stats.messages:,} MCP messages, {len(recorder.calls):,} tool calls"
    if stats.truncated:
        line += f", {stats.truncated:,} truncated (raise --max-message)"
    if result.summary.dropped:
        line += f", {result.summary.dropped:,} events dropped"
    err.print(line)
    if out is not None:
        err.print(f"Wrote {out}")
    if jsonl is not None:
        err.print(f"Wrote {jsonl}")
