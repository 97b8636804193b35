"""Render an `explain` document: human text (numbers with units, who, where, what to change) or JSON."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TextIO

from whyprobe.analyze.samples import frame_text
from whyprobe.units import fmt_count, fmt_ns


def _when(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_explain_json(doc: dict, out: TextIO) -> None:
    json.dump(doc, out, indent=2, sort_keys=False)
    out.write("\n")


def render_explain_text(doc: dict, out: TextIO) -> None:
    w = doc["window"]
    out.write(f"{doc['database']} ({doc.get('flavor', 'whyprobe')}): {fmt_ns(w['end_ns'] - w['start_ns'])} from {_when(w['start_ns'])}\n")
    if not doc["complete"]:
        lost = doc.get("dropped_events", 0) + doc.get("not_stored_events", 0)
        out.write(f"  incomplete: {fmt_count(lost)} events were dropped or not stored; missing evidence shows up as `unknown`\n")
    for note in doc.get("notes", []):
        out.write(f"  note: {note}\n")
    findings = doc["findings"]
    if not findings:
        out.write("\nNo findings: no op has a tail and no GPU thread goes idle in this window.\n")
        return
    real = [f for f in findings if not f.get("minor")]
    minor = [f for f in findings if f.get("minor")]
    if real:
        out.write(f"\n{len(real)} finding(s), ranked by explained time:\n")
    for i, f in enumerate(real, 1):
        _finding(f, i, doc, out)
    if minor:
        out.write(f"\n{len(minor)} minor finding(s), each costing less than max(1 ms, 0.1% of the window) (not ranked, no fix):\n")
        for f in minor:
            out.write(f"  - {f['summary']}\n")


def _finding(f: dict, i: int, doc: dict, out: TextIO) -> None:
    out.write(f"\n{i}. [{f['severity'].upper()}] {f['summary']}\n")
    if f.get("kernels"):
        out.write("   kernels: " + ", ".join(f"{k['kernel']} ({k['slow_calls']} slow)" for k in f["kernels"][:3]) + "\n")
    if f["kind"] == "tail":
        out.write(
            f"   {f['op']}: {fmt_count(f['count'])} calls, p50 {fmt_ns(f['p50_ns'])}, p99 {fmt_ns(f['p99_ns'])}, "
            f"p99.9 {fmt_ns(f['p999_ns'])}; {f['slow_calls']} slow (> {fmt_ns(f.get('threshold_ns', 0))}) on tid {f['tid']}\n"
        )
    for c in f["causes"]:
        out.write(f"   - {c['kind']}: {fmt_ns(c['explained_ns'])} over {c['slow_calls']} {'gap' if f['kind'] == 'gap' else 'call'}(s)")
        if c["blockers"]:
            who = ", ".join(
                f"{b['comm'] or '?'} (pid {b['pid']}, tid {b['tid']}{', CPU ' + str(b['cpu']) if 'cpu' in b else ''}) {fmt_ns(b['ns'])}"
                for b in c["blockers"][:3]
            )
            out.write(f" — {who}")
        if c.get("peers"):
            out.write(" — retransmits to " + ", ".join(f"{p['peer']} ×{p['retransmits']}" for p in c["peers"][:3]))
        if c.get("stalls"):
            out.write(" — " + ", ".join(f"{k} ×{n}" for k, n in c["stalls"].items()))
        if c.get("oom_kills"):
            out.write(" — OOM kill of pid " + ", ".join(str(o["victim_pid"]) for o in c["oom_kills"][:3]))
        out.write("\n")
        if c.get("frames"):
            hot = ", ".join(f"{100 * x['share']:.0f}% {frame_text(x)}" for x in c["frames"])
            out.write(f"     ran ({c.get('samples', 0)} on-CPU samples): {hot}\n")
    if f.get("stack"):
        out.write("   stack: " + " ← ".join(f["stack"][:4]) + "\n")
    for note in f.get("notes", []):
        if note not in doc.get("notes", []):
            out.write(f"   note: {note}\n")
    for r in f["recommendations"]:
        out.write(f"   fix: {r}\n")
