"""`whyprobe config --example`: a commented config in the seed file's shape, rendered from the model."""

from __future__ import annotations

import json
from typing import Any, Sequence

import yaml

from whyprobe.config import Config

__all__ = ["example_yaml"]


def example_yaml(tools: Sequence[tuple[str, str, bool]] = ()) -> str:
    """A commented config in the seed file's shape (what `whyprobe config --example` prints).

    Scalars are the defaults; the lists hold working examples: the probes of the
    seed file and, from `tools` ((name, description, event-shaped) of every
    server tool), the full tool list, so deleting a line hides that tool.
    """
    lines = [
        "# whyprobe configuration. Every key is optional: a missing key takes the value shown here.",
        "# The probes lists and the tools list are examples (an empty or missing list: no extra probes; every tool).",
        "# Durations read like 30s, 250ms, 5m, 1h; sizes like 64MiB, 1GB, 512k.",
        "",
    ]
    defaults = Config()
    for section, field in Config.model_fields.items():
        lines.append(f"# {field.description}")
        lines.append(f"{section}:")
        if section == "tools":
            lines.append("  # One entry per tool served, with its description; schema: \"event\" = structured output")
            lines.append("  # carries an `events` list of event objects. (Or a mapping: enable / disable / descriptions.)")
            entries = [{"name": n, "description": d, **({"schema": "event"} if ev else {})} for n, d, ev in tools]
            lines.extend(_block(entries, indent="") if entries else ["  disable: []"])
            lines.append("")
            continue
        sub = getattr(defaults, section)
        for key, info in type(sub).model_fields.items():
            lines.append(f"  # {info.description}")
            value = getattr(sub, key)
            example = (info.json_schema_extra or {}).get("example") if isinstance(info.json_schema_extra, dict) else None
            if example:
                lines.append(f"  {key}:")
                lines.extend(_block(example, indent="  "))
                continue
            if key.endswith("_size") and value % 2**20 == 0:
                value = f"{value >> 20}MiB"
            lines.append(f"  {info.alias or key}: {_yaml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _block(items: list[dict], indent: str) -> list[str]:
    """A list of mappings as block YAML, strings double-quoted like the seed file."""
    out = []
    for item in items:
        for i, (k, v) in enumerate(item.items()):
            out.append(f"{indent}  {'- ' if i == 0 else '  '}{k}: {_yaml_value(v)}")
    return out


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return json.dumps(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
