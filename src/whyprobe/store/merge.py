"""Merge per-node traces (whyprobe or Ingero) into one fleet database.

Every event gets a `node`: its own events.node, else the input's node from
sessions.node, schema_info 'node', or the file stem. Timestamps are moved onto
one reference clock by subtracting the input's clock skew (its host's wall
clock minus the reference): `sessions.clock_skew_ns`, else schema_info
'clock_skew_ns', else an explicit override, else 0 (unknown: nothing applied).
What was applied per input is stored in the `merge_inputs` table and in
schema_info 'clock_corrections'. Node-qualified rows for pids/tids/snapshots
live in `<table>_by_node` (see store/transfer.py). Findings, MCP messages, tool
calls and audit rows are kept, each with its node and with ids remapped.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from whyprobe.errors import StoreError
from whyprobe.store.transfer import atomic_output, copy_inputs, describe, write_info

MERGE_INPUTS_DDL = """
CREATE TABLE IF NOT EXISTS merge_inputs (
    idx           INTEGER PRIMARY KEY,
    path          TEXT NOT NULL,
    flavor        TEXT NOT NULL,
    node          TEXT NOT NULL,
    node_from     TEXT NOT NULL,
    events        INTEGER NOT NULL,
    clock_skew_ns INTEGER NOT NULL,   -- subtracted from this input's timestamps
    skew_from     TEXT NOT NULL
)"""


def merge_traces(
    paths: list[str | os.PathLike],
    out: str | os.PathLike,
    *,
    force: bool = False,
    clock_skew_ns: dict[str, int] | None = None,
    node_names: dict[str, str] | None = None,
) -> dict:
    """Write `out` from all `paths`; clock_skew_ns overrides the skew per node name,
    node_names the node of an input (keyed by the path as given).

    Every input is opened and checked before anything is written; the output
    appears only when complete. Returns {"out", "events", "inputs": [...],
    "warnings": [...]}: a warning names inputs that share one node.
    """
    if not paths:
        raise StoreError("Nothing to merge: give at least one database")
    out = Path(out)
    overrides = dict(clock_skew_ns or {})
    names = dict(node_names or {})
    unnamed = sorted(set(names) - {str(p) for p in paths})
    if unnamed:
        raise StoreError(f"--node names no input database: {', '.join(unnamed)}")
    inputs = []
    for path in paths:
        if out.exists() and Path(path).exists() and out.resolve() == Path(path).resolve():
            raise StoreError(f"Output would overwrite an input: {out}")
        first = describe(path, node_fallback=None)
        if str(path) in names:
            first = dataclasses.replace(first, node=names[str(path)], node_from="--node")
        if first.node in overrides:
            first = describe(path, node_fallback=None, skew_ns=overrides[first.node])
        inputs.append(first)
    unknown = sorted(set(overrides) - {i.node for i in inputs})
    if unknown:
        raise StoreError(f"--clock-skew names no input node: {', '.join(unknown)} (nodes: {', '.join(sorted({i.node for i in inputs}))})")
    with atomic_output(out, force=force) as conn:
        summaries = copy_inputs(conn, inputs, per_node=True)
        conn.execute("BEGIN")
        conn.execute(MERGE_INPUTS_DDL)
        conn.executemany(
            "INSERT INTO merge_inputs(idx, path, flavor, node, node_from, events, clock_skew_ns, skew_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (i, s["path"], s["flavor"], s["node"], s["node_from"], s["events"], s["clock_skew_ns"], s["skew_from"])
                for i, s in enumerate(summaries)
            ],
        )
        write_info(
            conn,
            {
                "merged_from": [str(Path(p).resolve()) for p in paths],
                "clock_corrections": {s["node"]: s["clock_skew_ns"] for s in summaries},
            },
        )
        conn.execute("COMMIT")
    return {"out": str(out), "events": sum(s["events"] for s in summaries), "inputs": summaries, "warnings": _shared_nodes(inputs)}


def _shared_nodes(inputs: list) -> list[str]:
    """One line per node that several inputs resolve to: their rows become indistinguishable."""
    by_node: dict[str, list[str]] = {}
    for inp in inputs:
        by_node.setdefault(inp.node, []).append(str(inp.path))
    return [
        f"{len(files)} inputs are node {node!r} ({', '.join(files)}): their events share that node; "
        f"name them apart with --node DB=NAME"
        for node, files in by_node.items()
        if len(files) > 1
    ]
