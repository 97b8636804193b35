"""Convert an Ingero database into a whyprobe database.

Ingero's source ids 1-7 and their op ids are ours (events.py), so event
rows copy unchanged; ops our registry names get our name (Ingero's
`cudaStreamSync` reads `cudaStreamSynchronize`), ops it doesn't know (e.g. K8s
`pod_restart`) keep Ingero's name in our `ops` table. Integer event ids are
kept, so references into the original file stay valid. Ingero-only columns
(`stack_ips`, `rank`, `local_rank`, `world_size`) are not carried over;
`causal_chains` is kept as `ingero_causal_chains`. See store/transfer.py for
the table-by-table rules.
"""

from __future__ import annotations

import os
from pathlib import Path

from whyprobe.errors import StoreError
from whyprobe.store.transfer import atomic_output, copy_inputs, describe, write_info


def import_ingero(src: str | os.PathLike, out: str | os.PathLike, *, force: bool = False) -> dict:
    """Write `out` (a whyprobe DB) from the Ingero DB `src`; returns a summary dict.

    Raises StoreError if src is not an Ingero trace, or out exists and not force.
    """
    src, out = Path(src), Path(out)
    inp = describe(src, node_fallback="")
    if inp.flavor != "ingero":
        raise StoreError(f"Already a whyprobe database, nothing to import: {src}")
    if out.exists() and out.resolve() == src.resolve():
        raise StoreError(f"Output would overwrite the input: {out}")
    with atomic_output(out, force=force) as conn:
        (summary,) = copy_inputs(conn, [inp], per_node=False)
        conn.execute("BEGIN")
        facts = {"imported_from": str(src.resolve()), "source_flavor": "ingero"}
        if inp.node:
            facts["node"] = inp.node
        write_info(conn, facts)
        conn.execute("COMMIT")
    return {"out": str(out), **summary}
