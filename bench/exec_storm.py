"""Host churn through the payload path: `whyprobe trace --all` while a shell loop starts
/bin/true and cat as fast as it can (each exec comes with its path and argv, each dynamic load
with a dozen openat paths).

Reports events/s stored, how many of them carried a payload (path, argv, address), the drops
(events and payload records apart; target 0), payload ring bytes per payload record and per
event, and the tracer's CPU (its process time over the wall time; target under half a core).

Run as root after `make bpf`:  .venv/bin/python bench/exec_storm.py [SECONDS]
"""

from __future__ import annotations

import io
import json
import contextlib
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from whyprobe.commands import main as whyprobe

STORM = "while :; do /bin/true; cat /etc/hostname >/dev/null; done"
TARGET_CPU = 0.5  # cores
EVENTS_TARGET = 30_000  # events/s the churn makes


def run(seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "storm.db"
        storm = subprocess.Popen(["sh", "-c", STORM], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            out = io.StringIO()
            t0, c0 = time.perf_counter(), time.process_time()
            with contextlib.redirect_stdout(out):
                rc = whyprobe(["trace", "--all", "--json", "--duration", f"{seconds}s", "--out", str(db)])
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            storm.kill()
            storm.wait()
        assert rc == 0, out.getvalue()
        summary = json.loads(out.getvalue().strip().splitlines()[-1])
        conn = sqlite3.connect(db)
        with_detail, execs, opens = conn.execute(
            "SELECT COUNT(detail), SUM(source = 3 AND op = 5), SUM(source = 8 AND op = 257) FROM events"
        ).fetchone()
        flags = json.loads(conn.execute("SELECT flags FROM sessions").fetchone()[0] or "{}")
    events = summary["events"]
    payload_bytes = flags.get("payload_ring", {}).get("bytes", 0)
    payload_records = flags.get("payload_ring", {}).get("records", 0)
    return {
        "seconds": seconds, "wall_s": wall, "cpu_s": cpu, "events": events, "with_detail": with_detail,
        "execs": execs or 0, "opens": opens or 0, "dropped": summary["dropped"]["total"],
        "payloads_lost": summary["payloads_lost"]["records"], "payload_bytes": payload_bytes,
        "payload_records": payload_records,
    }


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 15.0
    r = run(seconds)
    rate = r["events"] / r["seconds"]
    cores = r["cpu_s"] / r["wall_s"]
    per_payload = r["payload_bytes"] / max(r["payload_records"], 1)
    per_event = r["payload_bytes"] / max(r["events"], 1)
    print(f"exec storm, trace --all for {r['seconds']:.0f} s: {r['events']:,} events ({rate:,.0f}/s), "
          f"{r['with_detail']:,} with a detail, {r['execs']:,} execs, {r['opens']:,} openat")
    print(f"  dropped: {r['dropped']:,} events, {r['payloads_lost']:,} payload records")
    print(f"  payload ring: {r['payload_records']:,} records, {per_payload:,.0f} bytes each, {per_event:,.1f} bytes per event")
    print(f"  tracer CPU: {r['cpu_s']:.2f} s over {r['wall_s']:.2f} s = {cores:.2f} cores (target < {TARGET_CPU})")
    print(json.dumps([
        {"bench": "exec_storm_events", "value": round(rate), "unit": "events/s", "target": EVENTS_TARGET, "baseline": None,
         "ratio": round(rate / EVENTS_TARGET, 3)},
        {"bench": "exec_storm_drops", "value": r["dropped"] + r["payloads_lost"], "unit": "events + payload records lost",
         "target": 0, "baseline": r["events"], "ratio": round((r["dropped"] + r["payloads_lost"]) / max(r["events"], 1), 5)},
        {"bench": "exec_storm_payload_bytes", "value": round(per_event, 1), "unit": "payload ring bytes/event",
         "target": None, "baseline": 4152, "ratio": round(per_event / 4152, 4)},
        {"bench": "exec_storm_tracer_cpu", "value": round(cores, 3), "unit": "cores", "target": TARGET_CPU, "baseline": None,
         "ratio": round(cores / TARGET_CPU, 3)},
    ]))


if __name__ == "__main__":
    main()
