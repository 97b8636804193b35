"""Shapes of tool output: the byte cap over structured content, and `schema: "event"`."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["cap_output", "event_shaped", "EventShaped", "EventObject"]


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def cap_output(data: dict, cap: int) -> tuple[dict, str]:
    """(data, its JSON) with the JSON at most `cap` bytes: halve the longest list until it fits.

    What was cut is said in the data itself (`output_truncated`), so a client reading only
    structured content knows the answer is partial and how to ask for less.
    """
    blob = _dumps(data)
    if len(blob.encode()) <= cap:
        return data, blob
    omitted, had_events = 0, "events" in data
    while True:
        lists = [(len(v), path, v) for path, v in _lists(data, ()) if v]
        if not lists:
            break
        _, path, longest = max(lists, key=lambda x: x[0])
        keep = len(longest) // 2
        omitted += len(longest) - keep
        _set(data, path, longest[:keep])
        data["output_truncated"] = {"cap_bytes": cap, "items_omitted": omitted, "hint": "use limit/filters for less"}
        blob = _dumps(data)
        if len(blob.encode()) <= cap:
            return data, blob
    # No list left to cut: what remains (long strings) is replaced by the note alone.
    data = {"output_truncated": {"cap_bytes": cap, "items_omitted": omitted, "hint": "use limit/filters for less"}}
    if had_events:
        data["events"] = []
    return data, _dumps(data)


def _lists(value: Any, path: tuple) -> list[tuple[tuple, list]]:
    out: list[tuple[tuple, list]] = []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _lists(v, (*path, k))
    elif isinstance(value, list):
        out.append((path, value))
        for i, v in enumerate(value):
            out += _lists(v, (*path, i))
    return out


def _set(data: Any, path: tuple, value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


class EventObject(BaseModel):
    """One event as every event-shaped tool output spells it (extra fields kept)."""

    model_config = ConfigDict(extra="allow")
    id: int = Field(description="events.id")
    timestamp_ns: int = Field(description="Start, unix ns.")
    duration_ns: int | None = Field(None, description="Duration in ns (off-CPU time for sched_switch).")
    pid: int | None = None
    tid: int | None = None
    op: str | None = Field(None, description="Op name, e.g. cudaLaunchKernel, sched_switch.")


class EventShaped(BaseModel):
    """`schema: "event"` in the config: the tool's own data plus `events`, a list of event objects."""

    model_config = ConfigDict(extra="allow")
    events: list[EventObject]


def event_shaped(data: dict) -> dict:
    """`data` with an `events` list: its own, else every event-like object it holds, in order.

    Event-like = a mapping with `id` and `timestamp_ns`; a duration under another
    name (off_cpu_ns) and the op of a whole answer (launch outliers) are filled in.
    """
    found = data["events"] if isinstance(data.get("events"), list) else _event_likes(data)
    events = []
    for e in found:
        e = dict(e)
        if "duration_ns" not in e and "off_cpu_ns" in e:
            e["duration_ns"] = e["off_cpu_ns"]
            e.setdefault("op", "sched_switch")
        if "op" not in e and isinstance(data.get("op"), str):
            e["op"] = data["op"]
        events.append(e)
    return {**data, "events": events}


def _event_likes(value: Any) -> list[dict]:
    if isinstance(value, dict):
        if "id" in value and "timestamp_ns" in value:
            return [value]
        return [e for v in value.values() for e in _event_likes(v)]
    if isinstance(value, list):
        return [e for v in value for e in _event_likes(v)]
    return []
