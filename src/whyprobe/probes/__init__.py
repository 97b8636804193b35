"""Probe families by name, for `trace --probes cuda,sched,...`.

Each family is a class in its own module, imported only when asked for (the
CLI starts without numpy and the BPF loader); host families (sched, block,
net, mem, syscalls, proc) all live in probes/host.py.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable

from whyprobe.errors import ConfigError

# name -> (module, class)
REGISTRY = {
    "cuda": ("whyprobe.probes.cuda", "CudaFamily"),
    "sched": ("whyprobe.probes.host", "SchedFamily"),
    "block": ("whyprobe.probes.host", "BlockFamily"),
    "net": ("whyprobe.probes.host", "NetFamily"),
    "mem": ("whyprobe.probes.host", "MemFamily"),
    "syscalls": ("whyprobe.probes.host", "SyscallsFamily"),
    "proc": ("whyprobe.probes.host", "ProcFamily"),
    "profile": ("whyprobe.probes.profile", "ProfileFamily"),
    "stacks": ("whyprobe.probes.stacks", "StacksFamily"),
    "wire": ("whyprobe.probes.wire", "WireFamily"),
    "custom": ("whyprobe.probes.custom", "CustomFamily"),
}


def _family_class(name: str) -> type:
    module, cls = REGISTRY[name]
    return getattr(importlib.import_module(module), cls)


def available() -> list[str]:
    """Family names `--probes` accepts."""
    return list(REGISTRY)


def families(names: Iterable[str], **options: dict[str, Any]) -> list:
    """Instantiate families by name; options[name] are that family's constructor keyword arguments."""
    out = []
    for name in dict.fromkeys(n.strip() for n in names if n.strip()):
        if name not in REGISTRY:
            raise ConfigError(f"Unknown probe family {name!r}: valid ones are {', '.join(available())}")
        out.append(_family_class(name)(**options.get(name, {})))
    return out
