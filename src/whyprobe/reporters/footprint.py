"""`whyprobe footprint` output: a per-tool table (calls, latency, CPU, syscalls, files, libraries,
endpoints, children) and the same as JSON. The files column shows what the tool itself touched;
what runtimes opened on their own is one counted line under it."""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from whyprobe.analyze.footprint import RUNTIME_GROUP_NAMES, Footprint
from whyprobe.units import fmt_bytes, fmt_ns

MAX_ITEMS = 4


def per_tool(calls: Sequence[Footprint]) -> list[dict[str, Any]]:
    """One summary per tool, busiest first; quantiles exact (numpy linear interpolation)."""
    tools: dict[str, list[Footprint]] = {}
    for c in calls:
        tools.setdefault(c.tool_name, []).append(c)
    out = []
    for name, group in tools.items():
        lat = np.array([c.duration for c in group], dtype=np.float64)
        sys_counts: Counter[str] = Counter()
        for c in group:
            for sc, (n, _) in c.top_syscalls.items():
                sys_counts[sc] += n

        def union(attr: str) -> list[str]:
            return list(dict.fromkeys(x for c in group for x in getattr(c, attr)))

        runtime = {g: list(dict.fromkeys(p for c in group for p in c.runtime.get(g, ()))) for g in RUNTIME_GROUP_NAMES}

        out.append({
            "tool_name": name,
            "calls": len(group),
            "errors": sum(c.is_error for c in group),
            "shared": sum(c.attribution == "shared" for c in group),
            "p50_ns": float(np.quantile(lat, 0.5)),
            "p99_ns": float(np.quantile(lat, 0.99)),
            "cpu_user_ns": sum(c.cpu_user_ns for c in group),
            "cpu_sys_ns": sum(c.cpu_sys_ns for c in group),
            "syscalls": sum(c.syscalls for c in group),
            "syscall_ns": sum(c.syscall_ns for c in group),
            "top_syscalls": dict(sys_counts.most_common(5)),
            "files": union("files"),
            "files_failed": union("files_failed"),
            "runtime": {g: len(paths) for g, paths in runtime.items() if paths},
            "endpoints": union("endpoints"),
            "children": union("children"),
            "libraries": union("libraries"),
            "block_bytes": sum(c.block_bytes for c in group),
            "cuda_calls": sum(c.cuda_calls for c in group),
        })
    return sorted(out, key=lambda t: -t["calls"])


def _items(values: list[str]) -> str:
    if not values:
        return "-"
    shown = "\n".join(values[:MAX_ITEMS])
    return shown + (f"\n… {len(values) - MAX_ITEMS} more" if len(values) > MAX_ITEMS else "")


def _files(t: dict[str, Any]) -> str:
    """The tool's own files first; failed opens and the runtime's files after, counted."""
    text = _items(t["files"])
    if t["files_failed"]:
        text += f"\n{len(t['files_failed'])} failed: " + ", ".join(t["files_failed"][:2]) + (" …" if len(t["files_failed"]) > 2 else "")
    if t["runtime"]:
        text += f"\nruntime {sum(t['runtime'].values())}: " + ", ".join(f"{g} {n}" for g, n in t["runtime"].items())
    return text


def render(console: Console, calls: Sequence[Footprint], *, servers: dict[int, str] | None = None) -> None:
    if not calls:
        console.print("No tools/call was answered while tracing: nothing to attribute.")
        return
    table = Table(title="MCP tool footprint (per tool, totals over its calls)", show_lines=True)
    for col in ("tool", "calls", "p50", "p99", "CPU user/sys", "syscalls (top)", "files", "libraries", "endpoints", "children"):
        table.add_column(col, overflow="fold")
    for t in per_tool(calls):
        calls_text = str(t["calls"]) + (f"\n{t['errors']} err" if t["errors"] else "") + (f"\n{t['shared']} shared" if t["shared"] else "")
        top = ", ".join(f"{k} {v}" for k, v in t["top_syscalls"].items())
        io = f"\nblock {fmt_bytes(t['block_bytes'])}" if t["block_bytes"] else ""
        cuda = f"\nCUDA {t['cuda_calls']}" if t["cuda_calls"] else ""
        table.add_row(
            t["tool_name"], calls_text, fmt_ns(t["p50_ns"]), fmt_ns(t["p99_ns"]),
            f"{fmt_ns(t['cpu_user_ns'])} / {fmt_ns(t['cpu_sys_ns'])}",
            f"{t['syscalls']:,} ({fmt_ns(t['syscall_ns'])})\n{top}{io}{cuda}",
            _files(t), _items(t["libraries"]), _items(t["endpoints"]), _items(t["children"]),
        )
    console.print(table)
    if servers:
        for pid, name in sorted(servers.items()):
            console.print(f"server pid {pid}: {name}", highlight=False)


def to_json(calls: Sequence[Footprint]) -> dict[str, Any]:
    return {"tools": per_tool(calls), "calls": [c.to_dict() for c in calls]}
