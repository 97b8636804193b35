"""Recorded runs of the scenarios, for hosts that cannot trace (no root, no eBPF).

`replays/<scenario>.db.gz` are real recordings made with record_replays.py on
a host that could trace; run_replay() decompresses one, and origin() says
where and when it was made, so the demo can say plainly that it is a replay.
"""

from __future__ import annotations

import gzip
import os
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from whyprobe.demo.scenarios.catalog import get
from whyprobe.demo.scenarios.live import check_out, remove_db
from whyprobe.errors import WhyprobeError

REPLAY_DIR = Path(__file__).resolve().parents[1] / "replays"


def replay_path(name: str) -> Path:
    return REPLAY_DIR / f"{get(name).name}.db.gz"


def run_replay(name: str, out: Path, *, force: bool = False) -> Path:
    """Decompress the recording of scenario `name` to `out` (refused if `out` exists, unless force)."""
    src = replay_path(name)
    if not src.is_file():
        raise WhyprobeError(f"No recording of {name} ships with this whyprobe ({src} is missing)")
    out = Path(out)
    check_out(out, force)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        rebuild_indexes(tmp)
        if force:
            remove_db(out)
        tmp.rename(out)
    except (OSError, sqlite3.Error) as exc:
        raise WhyprobeError(f"Cannot write {out}: {getattr(exc, 'strerror', None) or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def rebuild_indexes(db: Path) -> None:
    """Recreate what recordings ship without (the events indexes), through the schema's own DDL."""
    from whyprobe.store import schema

    conn = sqlite3.connect(db)
    try:
        schema.create(conn)
    finally:
        conn.close()


def origin(db: Path) -> str:
    """"<host> on <date> (kernel <release>)" from the recording's session row."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT hostname, started_at, kernel FROM sessions ORDER BY id LIMIT 1").fetchone()
    except sqlite3.Error:
        row = None
    finally:
        conn.close()
    if not row:
        return "an unknown host"
    host, started, kernel = row
    when = datetime.fromtimestamp(started / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{host or 'an unknown host'} on {when}" + (f" (kernel {kernel})" if kernel else "")


def is_privileged() -> bool:
    from whyprobe.kernel.caps import privileged

    return privileged()


def tracing_unavailable() -> str | None:
    """Why a live run cannot work here (the reason shown before a replay), or None when it can."""
    if not is_privileged():
        return "not root: tracing needs root or CAP_BPF+CAP_PERFMON"
    from whyprobe.kernel.loader import bpf_object_path

    if not bpf_object_path("cuda").exists():
        return "BPF objects are not built: run `make bpf`"
    if not shutil.which(os.environ.get("CC", "gcc")):
        return "no C compiler to build the demo workload: apt-get install gcc"
    from whyprobe.kernel.caps import check_report

    problems = check_report()["problems"]
    return problems[0] if problems else None
