"""Render top stacks as text or JSON to an explicit stream."""

from __future__ import annotations

import json
from typing import TextIO


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms"


def render_stacks(stacks: list[dict], out: TextIO) -> None:
    if not stacks:
        out.write("no stacks in this trace (record with stack capture on)\n")
        return
    for i, s in enumerate(stacks, 1):
        if s["op"] == "cpu_sample":  # instants: a count of samples, no duration
            out.write(f"#{i} on-CPU: {s['count']} samples\n")
        else:
            out.write(f"#{i} {s['op']}: {s['count']} calls, {_ms(s['total_ns'])} total\n")
        for f in s["frames"]:
            out.write(f"    {f}\n")


def render_stacks_json(stacks: list[dict], out: TextIO) -> None:
    json.dump(stacks, out)
    out.write("\n")
