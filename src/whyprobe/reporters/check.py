"""Render the readiness report of `whyprobe check`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _mark(ok: bool) -> str:
    return "[green]yes[/green]" if ok else "[red]no[/red]"


def render_check(report: dict, console: Console) -> None:
    k = report["kernel"]
    facts = Table(title="whyprobe check", show_header=False, box=None)
    facts.add_row("kernel", f"{k['kernel']} ({k['arch']})")
    facts.add_row("BTF", _mark(k["btf"]))
    facts.add_row("privileged", _mark(k["privileged"]))
    mounted_now = " (was not mounted: whyprobe mounted it)" if k["tracefs"].get("mounted_by_whyprobe") else ""
    facts.add_row("tracefs", f"{_mark(k['tracefs']['mounted'])} {k['tracefs']['path']}{mounted_now}")
    facts.add_row("memlock", str(k["memlock"]))
    console.print(facts)

    caps = Table(title="program / attach types (loaded, attached and fired here)")
    caps.add_column("type")
    caps.add_column("works")
    caps.add_column("detail", overflow="fold")
    for name, res in k["capabilities"].items():
        caps.add_row(name, _mark(bool(res["ok"])), str(res["detail"]))
    console.print(caps)

    cuda = report.get("cuda", {})
    libs = Table(title="CUDA libraries")
    libs.add_column("library")
    libs.add_column("found via")
    libs.add_column("symbols", justify="right")
    libs.add_column("missing", overflow="fold")
    for lib in cuda.get("libraries", []):
        missing = lib.get("missing", [])
        libs.add_row(lib["path"], lib.get("via", ""), str(lib.get("symbols", "")), ", ".join(missing) if missing else "-")
    if not cuda.get("libraries"):
        libs.add_row("[yellow]none found[/yellow]", ", ".join(cuda.get("searched", [])), "", "")
    console.print(libs)

    gpu = report.get("gpu", {})
    console.print(f"GPU driver: {gpu.get('driver') or 'none'}; devices: {', '.join(gpu.get('devices', [])) or 'none'}")
    for p in report["problems"]:
        console.print(f"[red]problem:[/red] {p}")
    console.print("[green]Tracing can work here.[/green]" if report["can_trace"] else "[red]Tracing cannot work here.[/red]")
