"""`whyprobe trace`: record CUDA calls and kernel evidence of chosen processes into SQLite."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from whyprobe.config import StorageConfig
from whyprobe.errors import CommandError
from whyprobe.commands.common import check_targets, duration_s, ring_bytes, stdout_to_stderr
from whyprobe.record.targets import check_out

HOST_FAMILIES = ("proc", "sched", "block", "net", "mem", "syscalls", "profile")
DEFAULT_RING = StorageConfig().ring_size
PAYLOAD_RING_MIN = 4 << 20  # ~45,000 paths of ~90 bytes


def _family_names(probes: Optional[str], stack: bool) -> tuple[list[str], bool]:
    """(names, explicit): the chosen families; by default cuda plus every host family built in."""
    from whyprobe import probes as registry

    if probes:
        names = [n.strip() for n in probes.split(",") if n.strip()]
        explicit = True
    else:
        have = registry.available()
        names = ["cuda"] + [n for n in HOST_FAMILIES if n in have]
        explicit = False
    # On-CPU samples carry stacks too: the stacks family symbolizes them (after profile, so it
    # configures the Python frame walk of every object that includes it).
    if (stack or "profile" in names) and "stacks" in registry.available() and "stacks" not in names:
        names.append("stacks")
    return names, explicit


def _cuda_libraries(libs: list[str], cmd: list[str], pids: list[int], all_procs: bool) -> tuple[list[tuple[str, str]], list[str], bool]:
    """((path, how found) to attach now, places searched, whether any CUDA library exists at all).

    --pid targets get only the libraries they map (others' calls would hit our
    probes too); libraries they dlopen later are attached by the maps scan.
    """
    from whyprobe.errors import WhyprobeError
    from whyprobe.probes import libs as libsearch
    from whyprobe.probes.cuda import plan_library

    for path in libs:
        if not Path(path).is_file():
            raise CommandError(f"No such library: {path}")
        try:
            plan = plan_library(path)
        except WhyprobeError as exc:
            raise CommandError(str(exc)) from None
        if not plan.found:
            raise CommandError(f"{path} defines none of the CUDA functions whyprobe probes (not a libcudart/libcuda?)")
    if libs:
        return [(p, "--lib") for p in libs], [], True
    if cmd:
        hits, searched = libsearch.resolve_for_command(cmd)
        return [(h.path, h.via) for h in hits], searched, bool(hits)
    mapped, _ = libsearch.find_cuda_libraries(pids=pids, include_installed=False)
    installed, searched = libsearch.find_cuda_libraries(pids=pids, include_installed=True)
    if all_procs:
        mapped = installed + [libsearch.LibraryHit(os.path.realpath(p), "maps") for found in libsearch.cuda_processes().values() for p in found]
    return list(dict.fromkeys((h.path, h.via) for h in mapped)), searched, bool(installed)


def register(app: typer.Typer) -> None:
    @app.command("trace", context_settings={"allow_interspersed_args": False})
    def trace(
        pid: List[int] = typer.Option([], "--pid", help="Trace this process and its children (repeatable)."),
        cmd: bool = typer.Option(False, "--cmd", help="Launch and trace the command given after `--`."),
        all_procs: bool = typer.Option(False, "--all", help="Trace every process."),
        duration: Optional[str] = typer.Option(None, "--duration", help="Stop after this long (30s, 5m, 1h)."),
        out: Path = typer.Option(Path("whyprobe.db"), "--out", "-o", help="Database to write."),
        probes: Optional[str] = typer.Option(None, "--probes", help="Comma-separated families: cuda,sched,block,net,mem,syscalls,proc,profile,stacks,wire."),
        stack: bool = typer.Option(False, "--stack", help="Capture user call stacks."),
        lib: List[str] = typer.Option([], "--lib", help="CUDA library to probe (repeatable); default: found automatically."),
        ring: Optional[str] = typer.Option(None, "--ring", help=f"Event ring buffer size (default {DEFAULT_RING >> 20}MiB, or storage.ring_size of --config); the payload ring (paths, argv, MCP bytes) is a quarter of it, at least 4MiB."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the final line."),
        json_out: bool = typer.Option(False, "--json", help="Print a JSON summary at exit."),
        force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
        config: Optional[Path] = typer.Option(None, "--config", help="YAML config file."),
        metrics: Optional[str] = typer.Option(None, "--metrics", help="Serve Prometheus metrics on [HOST]:PORT while tracing."),
        explain: bool = typer.Option(False, "--explain", help="Explain the trace live and print findings at the end."),
        serve: Optional[str] = typer.Option(None, "--serve", help="Serve the trace being recorded over MCP (streamable HTTP) on HOST:PORT."),
        args: List[str] = typer.Argument(None, help="The command to launch (after --cmd --)."),
    ) -> None:
        """Record CUDA calls and kernel evidence of processes into a SQLite trace.

        \b
          sudo whyprobe trace --cmd -- python train.py
          sudo whyprobe trace --pid $(pgrep -f vllm) --duration 30s --out t.db
          whyprobe explain t.db
        """
        args = list(args or [])
        seconds = duration_s(duration)
        cfg = _load_config(config)
        ring_size = ring_bytes(ring) if ring else (cfg.storage.ring_size if cfg else DEFAULT_RING)
        if cfg and not probes:
            probes = ",".join(cfg.probes.families + (["custom"] if cfg.probes.uprobes or cfg.probes.tracepoints else []))
        pid = _config_pids(cfg, list(pid), cmd, all_procs)
        check_targets(pid, cmd, args, "trace", all_procs=all_procs)
        check_out(out, force)
        if serve:
            from whyprobe.server.security import SecuritySettings, parse_bind, required_token

            settings = SecuritySettings(**cfg.security.settings_kwargs()) if cfg else SecuritySettings()
            required_token(settings, parse_bind(serve)[0])  # refuse a tokenless public bind now, not later
        names, explicit = _family_names(probes, stack)
        from whyprobe import probes as registry

        registry.families([n for n in names if n != "cuda"])  # unknown names fail here, before any work
        if "custom" in names and not (cfg and (cfg.probes.uprobes or cfg.probes.tracepoints)):
            raise CommandError(
                "--probes custom needs custom probes: list probes.uprobes or probes.tracepoints in a config file "
                "and pass it with --config (see `whyprobe config --example`)"
            )

        from whyprobe.probes import libs as libsearch

        targets = list(pid)
        if not (pid or cmd or all_procs):
            found = libsearch.cuda_processes()
            if not found:
                raise CommandError(
                    "No running process maps libcudart or libcuda: name one with --pid N, "
                    "launch one with --cmd -- ARGS, or trace every process with --all"
                )
            targets = sorted(found)
        warnings: list[str] = []
        cuda_libs: list[tuple[str, str]] = []
        if "cuda" in names:
            cuda_libs, searched, anywhere = _cuda_libraries(lib, args, targets, all_procs)
            if not anywhere:
                if explicit or names == ["cuda"]:
                    raise CommandError(f"No CUDA library (libcudart, libcuda) found; searched: {', '.join(searched)}. Name one with --lib PATH")
                warnings.append("no CUDA library found on this host: CUDA calls are traced only if a target loads one later")
        _run(
            out=out,
            names=names,
            cuda_libs=cuda_libs,
            targets=targets,
            cmd=args,
            all_procs=all_procs,
            seconds=seconds,
            ring_bytes=ring_size,
            stack=stack,
            quiet=quiet,
            json_out=json_out,
            force=force,
            cfg=cfg,
            config_path=config,
            metrics=metrics,
            explain=explain,
            serve=serve,
            warnings=warnings,
            profile_required=explicit,
        )


def _load_config(path: Optional[Path]):
    """The validated YAML config, or None; a bad file fails here, before any work."""
    if path is None:
        return None
    from whyprobe.config import load_config

    return load_config(path)


def _config_pids(cfg, pid: list[int], cmd: bool, all_procs: bool) -> list[int]:
    """security.pid_filtering in a trace: a list names the targets when the command line names none;
    true (record only the traced processes) cannot go with --all."""
    if cfg is None:
        return pid
    filtering = cfg.security.pid_filtering
    if filtering is True and all_procs:
        raise CommandError("security.pid_filtering: true records only the traced processes; drop --all or set pid_filtering: false")
    if isinstance(filtering, list) and filtering and not (pid or cmd or all_procs):
        return list(filtering)
    return pid


def _apply_config(cfg, options) -> None:
    options.max_events_per_sec = int(cfg.storage.max_events_per_second or 0)
    options.max_db_mb = float(cfg.storage.max_db_mb or 0)
    options.retention_hours = float(cfg.storage.retention_hours or 0)
    options.precision_ns = cfg.storage.precision_ms * 1_000_000


def _observers(options, metrics: Optional[str], explain: bool):
    """Prometheus exporter and live explainer, fed from the reader thread (imported only when asked for)."""
    exporter = explainer = None
    if metrics:
        from whyprobe.export.prometheus import TraceMetrics

        exporter = TraceMetrics()
        options.on_records.append(exporter.observe)
    if explain:
        from whyprobe.analyze.explain import LiveExplainer

        explainer = LiveExplainer()
        options.on_rows.append(explainer.feed)
    return exporter, explainer


def _run(
    *,
    out: Path,
    names: list[str],
    cuda_libs: list[tuple[str, str]],
    targets: list[int],
    cmd: list[str],
    all_procs: bool,
    seconds: Optional[float],
    ring_bytes: int,
    stack: bool,
    quiet: bool,
    json_out: bool,
    force: bool,
    cfg,
    config_path: Optional[Path],
    metrics: Optional[str],
    explain: bool,
    serve: Optional[str],
    warnings: list[str],
    profile_required: bool = False,
) -> None:
    import time

    import orjson
    from rich.console import Console

    from whyprobe import probes as registry
    from whyprobe.errors import WhyprobeError
    from whyprobe.probes.base import TargetSpec
    from whyprobe.record.capture import capture, remove_db, session_argv
    from whyprobe.record.details import drops_where
    from whyprobe.record.session import TraceOptions

    stderr = Console(stderr=True)
    # The payload ring grows with --ring, so a larger event ring is not undone by a payload ring that fills first.
    options = TraceOptions(ring_bytes=ring_bytes, payload_ring_bytes=max(PAYLOAD_RING_MIN, ring_bytes // 4), capture_stacks=stack,
                           session_fields={"argv": session_argv()})
    if cfg:
        _apply_config(cfg, options)
    exporter, explainer = _observers(options, metrics, explain)
    custom = {"uprobes": cfg.probes.uprobes, "tracepoints": cfg.probes.tracepoints} if cfg else {}
    fams = registry.families([n for n in names if n != "wire"], cuda={"libraries": cuda_libs}, custom=custom,
                             profile={"required": profile_required})
    recorder = None
    if "wire" in names:
        # The recorder, not the bare family: what the wire captures is decoded and stored
        # (mcp_messages, tool_calls), beside the CUDA, scheduler and syscall events.
        from whyprobe.record.wire import WireRecorder

        recorder = WireRecorder(ignore_pids={os.getpid()})
        fams.append(recorder)
    if force:
        remove_db(out)
    reported: set[str] = set()
    next_explain = time.monotonic() + 1.0
    stop_metrics = None

    server = None

    def started(session, more: list[str]) -> None:
        nonlocal stop_metrics, server
        if exporter is not None:
            stop_metrics = exporter.serve(metrics)
        if serve:
            # A separate read-only process over the live WAL database: the same server as
            # `whyprobe mcp --http`, with its security rules, never slowing the drain.
            import subprocess

            argv = [sys.executable, "-m", "whyprobe", "mcp", "--db", str(out), "--http", "--bind", serve]
            server = subprocess.Popen(argv + (["--config", str(config_path)] if config_path else []))
            if not quiet and not json_out:
                stderr.print(f"Serving this trace over MCP at http://{serve}/mcp", highlight=False)
        if not quiet and not json_out:
            for w in warnings + more:
                stderr.print(f"[yellow]warning:[/yellow] {w}", highlight=False)

    def observe(session) -> None:
        nonlocal next_explain
        if exporter is not None:
            drops = session.snapshot().drops
            exporter.set_drops(ring=drops.get("ring", 0), queue=drops.get("queue", 0), rate=drops.get("rate", 0), payload=drops.get("payload", 0))
        if explainer is not None and time.monotonic() >= next_explain and not json_out:
            next_explain = time.monotonic() + 1.0
            for f in explainer.findings():
                if f["id"] not in reported:
                    reported.add(f["id"])
                    stderr.print(f"[bold]finding[/bold] ({f['severity']}): {f['summary']}", highlight=False)

    view = None
    if not (quiet or json_out or not sys.stderr.isatty()):
        from whyprobe.ui.live import LiveView

        def view(session):
            return LiveView(session.snapshot, str(out), stderr)

    try:
        with stdout_to_stderr(json_out):
            result = capture(out, fams, TargetSpec(pids=targets, trace_all=all_procs), options, cmd, seconds,
                             on_started=started, on_tick=observe, view=view)
    except WhyprobeError as exc:
        raise CommandError(str(exc)) from None
    finally:
        if stop_metrics is not None:
            stop_metrics()
        if server is not None:
            server.terminate()
            server.wait(10)
    summary, child_status = result.summary, result.command_status
    if recorder is not None and recorder.calls:
        from whyprobe.analyze import footprint

        footprint.analyze_and_store(out, {cid: c.handler_tid for cid, c in recorder.calls})

    if cfg is not None and cfg.storage.backend in ("duckdb", "columnar"):
        from whyprobe.export.duckdb_backend import to_duckdb

        to_duckdb(out, out.with_suffix(".duckdb"))
        if not json_out:
            print(f"Wrote {out.with_suffix('.duckdb')} (columnar copy, storage.backend: {cfg.storage.backend})")
    if explainer is not None:
        from whyprobe.analyze.explain import trace_names
        from whyprobe.store.reader import open_trace

        with open_trace(out) as db:
            explainer.finish(trace_names(db))
    if json_out:
        doc = summary.to_json()
        doc["command_exit_status"] = child_status
        if recorder is not None:
            doc.update(mcp_messages=recorder.messages_written, tool_calls=len(recorder.calls))
        if explainer is not None:
            doc["findings"] = explainer.findings()
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        return
    line = f"Wrote {out} ({summary.events:,} events, {summary.dropped:,} dropped"
    line += f", {recorder.messages_written:,} MCP messages, {len(recorder.calls):,} tool calls)" if recorder is not None else ")"
    if summary.dropped:
        line += f" - drops: ring {summary.ring_drops:,}, rate limit {summary.rate_drops:,}, writer queue {summary.queue_drops:,}"
        where = drops_where(summary.by_family, summary.by_cpu, "events")
        line += f" ({where})" if where else ""
    if summary.payload_drops:
        where = drops_where(summary.by_family, summary.by_cpu, "payloads")
        line += (f" - {summary.payload_drops:,} payload records lost ({where}): {summary.details_lost:,} events stored"
                 " without their path/argv/address")
    print(line)
    if quiet:
        return
    if child_status is not None:
        print(f"Command exited with status {child_status}")
    if explainer is not None:
        # All of them, most costly first: the live lines above came as evidence settled.
        for f in explainer.findings():
            print(f"finding ({f['severity']}): {f['summary']}")
    print(f"Next: whyprobe stats {out}\n      whyprobe explain {out}")
