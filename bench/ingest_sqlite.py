"""SQLite ingest rate through the Writer: 1 M events-table rows in batches of 64 k.

Prints a human summary and, as the last line, one JSON object:
{"bench": "ingest_sqlite", "value": rows/s, "unit": "rows/s", "target": 300000, "ratio": value/target}
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from whyprobe.events import EVENT_DTYPE
from whyprobe import clock
from whyprobe.store.rows import rows_from_records
from whyprobe.store.writer import Writer

TARGET = 300_000


def make_records(n: int, seed: int = 1) -> np.ndarray:
    """Ring-shaped records spread over ~2 minutes, 40 pids, a handful of ops."""
    rng = np.random.default_rng(seed)
    rec = np.zeros(n, EVENT_DTYPE)
    rec["ts_ns"] = 10**12 + np.sort(rng.integers(0, 120 * 10**9, n)).astype(np.uint64)
    rec["duration_ns"] = rng.lognormal(9, 1.5, n).astype(np.uint64)
    rec["pid"] = rng.integers(1000, 1040, n)
    rec["tid"] = rec["pid"] + rng.integers(0, 8, n).astype(np.uint32)
    rec["source"] = rng.choice([1, 3, 4, 8], n)
    rec["op"] = rng.integers(1, 6, n)
    rec["arg0"] = rng.integers(0, 2**20, n).astype(np.uint64)
    rec["cpu"] = rng.integers(0, 16, n)
    return rec


def run(n: int, batch: int) -> dict:
    records = make_records(n)
    offset = clock.measure_offset_ns()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        t0 = time.perf_counter()
        writer = Writer(path, max_queue=1 << 20)
        for start in range(0, n, batch):
            writer.put_events(rows_from_records(records[start : start + batch], offset))
        writer.flush()
        elapsed = time.perf_counter() - t0
        t1 = time.perf_counter()
        writer.close()  # builds the deferred indexes
        closing = time.perf_counter() - t1
        size = path.stat().st_size
    return {"rows": n, "seconds": elapsed, "rate": n / elapsed, "drops": writer.queue_drops, "bytes": size, "close_s": closing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=64 * 1024)
    args = parser.parse_args()
    r = run(args.rows, args.batch)
    print(f"ingest_sqlite: {r['rows']:,} rows in {r['seconds']:.2f} s = {r['rate']:,.0f} rows/s "
          f"(target {TARGET:,}; queue drops {r['drops']}; close + index build {r['close_s']:.2f} s; "
          f"file {r['bytes'] / 2**20:.1f} MiB)")
    print(json.dumps({"bench": "ingest_sqlite", "value": round(r["rate"]), "unit": "rows/s", "target": TARGET, "ratio": round(r["rate"] / TARGET, 3)}))


if __name__ == "__main__":
    main()
