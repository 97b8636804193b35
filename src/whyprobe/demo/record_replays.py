"""Regenerate demo/replays/<scenario>.db.gz: real recordings of the scenarios (run as root).

    sudo .venv/bin/python -m whyprobe.demo.record_replays [--duration 2] [SCENARIO ...]

Each scenario is traced live, explained, and kept only if explain reports the
scenario's expected finding (retried a few times on a noisy host). To ship
small, the events indexes are dropped (run_replay rebuilds them) and the file
is vacuumed into rollback-journal mode; a run still over the budget is
recorded again, shorter. Rows are never edited, and cut only for mcp-tool: the
start-up syscalls before the first MCP message, checked to leave every
footprint unchanged. Otherwise what ships is exactly what was recorded.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

from whyprobe.demo import scenarios
from whyprobe.demo.scenarios.replay import REPLAY_DIR, rebuild_indexes
from whyprobe.events import Source

BUDGET_BYTES = 300_000
ATTEMPTS = 4
SYSCALL = int(Source.SYSCALL)
EVENT_INDEXES = ("idx_events_timestamp", "idx_events_source_op", "idx_events_tid_ts", "idx_events_pid")


def _verdict(name: str, db: Path) -> list[str]:
    return scenarios.get(name).verdict(scenarios.document(name, db))


def _compact(db: Path) -> None:
    """Drop the events indexes and vacuum into one self-contained file (rollback journal, not WAL)."""
    conn = sqlite3.connect(db)
    try:
        for index in EVENT_INDEXES:
            conn.execute(f"DROP INDEX IF EXISTS {index}")
        conn.commit()
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("VACUUM")
    finally:
        conn.close()


def _trim_startup(name: str, db: Path) -> None:
    """mcp-tool only: drop the syscall events from before the first MCP message (two Python
    interpreters importing the SDK: ~25k events, most of the file). Every footprint lies after it,
    and the footprint document must come out identical, or the trim is refused."""
    before = scenarios.document(name, db)
    conn = sqlite3.connect(db)
    try:
        with conn:
            conn.execute("DELETE FROM events WHERE source = ? AND timestamp < (SELECT MIN(timestamp) FROM mcp_messages)", (SYSCALL,))
    finally:
        conn.close()
    if scenarios.document(name, db) != before:
        raise SystemExit(f"{name}: trimming start-up syscalls changed the footprints; not shipping a trimmed file")


def _gzip(db: Path, dest: Path) -> int:
    with open(db, "rb") as fin, open(dest, "wb") as raw:
        # mtime=0 and no file name: the same database always gives the same bytes.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as fout:
            shutil.copyfileobj(fin, fout)
    return dest.stat().st_size


def _replayed_verdict(name: str, packed: Path, work: Path) -> list[str]:
    """The verdict on the file as run_replay will restore it."""
    check = work / f"{name}-check.db"
    check.unlink(missing_ok=True)
    with gzip.open(packed) as fin, open(check, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    rebuild_indexes(check)
    return _verdict(name, check)


def record_one(name: str, duration_s: float, work: Path) -> Path:
    """Record until a run says the expected thing and packs under the budget (shorter runs if too big)."""
    for attempt in range(1, ATTEMPTS + 1):
        db = work / f"{name}-{attempt}.db"
        facts = scenarios.record(name, db, duration_s=duration_s)
        problems = _verdict(name, db)
        if scenarios.get(name).kind == "footprint" and not problems:
            _trim_startup(name, db)
        _compact(db)
        packed = work / f"{name}.db.gz"
        size = _gzip(db, packed)
        problems = problems or _replayed_verdict(name, packed, work)
        ran = "" if scenarios.get(name).kind == "footprint" else f"{duration_s:.2f} s, "
        print(f"{name}: {ran}{facts.events} events, {facts.dropped} dropped, {size:,} bytes packed; "
              + ("; ".join(problems) or "expected finding"))
        if size > BUDGET_BYTES:
            # Never cut rows out of a recording (aggregates would disagree): record less instead.
            duration_s *= 0.8 * BUDGET_BYTES / size
            continue
        if not problems:
            dest = REPLAY_DIR / f"{name}.db.gz"
            shutil.copyfile(packed, dest)
            print(f"{name}: wrote {dest} ({dest.stat().st_size:,} bytes)")
            return dest
    raise SystemExit(f"{name}: no run in {ATTEMPTS} attempts had {scenarios.get(name).expect} within {BUDGET_BYTES:,} bytes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Record the demo scenarios into demo/replays/ (needs root + eBPF).")
    parser.add_argument("names", nargs="*", metavar="SCENARIO", help=f"default: all of {', '.join(scenarios.SCENARIOS)}")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds of workload per recording")
    args = parser.parse_args(argv)
    reason = scenarios.tracing_unavailable()
    if reason:
        print(f"record_replays: cannot trace here: {reason}", file=sys.stderr)
        return 1
    REPLAY_DIR.mkdir(exist_ok=True)
    # On a real disk (io-stall reads with O_DIRECT, /tmp may be tmpfs); its paths show in the recordings.
    with tempfile.TemporaryDirectory(prefix="whyprobe-replays-", dir="/var/tmp") as tmp:
        for name in args.names or list(scenarios.SCENARIOS):
            record_one(scenarios.get(name).name, args.duration, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
