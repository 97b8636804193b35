"""Probe families by name, for `trace --probes cuda,sched,...`.

Each family lives in its own module; host families (sched, block, net,
syscalls, proc) come from probes/host.py, which exposes them either as a
`FAMILIES` dict (name -> class) or as classes named `<Name>Family`.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable

from whyprobe.errors import ConfigError

# name -> module holding it (class `<Name>Family`, or an entry in the module's FAMILIES).
REGISTRY = {
    "cuda": "whyprobe.probes.cuda",
    "sched": "whyprobe.probes.host",
    "block": "whyprobe.probes.host",
    "net": "whyprobe.probes.host",
    "syscalls": "whyprobe.probes.host",
    "proc": "whyprobe.probes.host",
    "stacks": "whyprobe.probes.stacks",
    "wire": "whyprobe.probes.wire",
    "custom": "whyprobe.probes.custom",
}


def _family_class(name: str) -> type | None:
    try:
        mod = importlib.import_module(REGISTRY[name])
    except ImportError:
        return None
    table = getattr(mod, "FAMILIES", None)
    if isinstance(table, dict) and name in table:
        return table[name]
    return getattr(mod, f"{name.capitalize()}Family", None)


def available() -> list[str]:
    """Family names this installation can load (registered and importable)."""
    return [n for n in REGISTRY if _family_class(n) is not None]


def families(names: Iterable[str], **options: dict[str, Any]) -> list:
    """Instantiate families by name; options[name] are that family's constructor keyword arguments."""
    valid = available()
    out = []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        cls = _family_class(name) if name in REGISTRY else None
        if cls is None:
            raise ConfigError(f"Unknown probe family {name!r}: valid ones are {', '.join(valid)}")
        out.append(cls(**options.get(name, {})))
    return out
