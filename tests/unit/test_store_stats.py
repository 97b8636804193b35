"""op_stats: exact quantiles, error counting, filters, on real and synthetic traces."""

from __future__ import annotations

import sqlite3
from collections import defaultdict

import numpy as np
import pytest

from whyprobe.analyze.stats import op_stats
from whyprobe.errors import StoreError
from whyprobe.store.reader import open_trace
from whyprobe.events import EVENT_ROW_DTYPE
from whyprobe.store.writer import Writer

QS = (("p50_ns", 50), ("p95_ns", 95), ("p99_ns", 99), ("p999_ns", 99.9))


def independent_stats(path, where: str = "", params: tuple = ()) -> dict:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    groups = defaultdict(list)
    for s, o, d in conn.execute(f"SELECT source, op, duration FROM events {where}", params):
        groups[(s, o)].append(d)
    conn.close()
    out = {}
    for key, durs in groups.items():
        d = np.array(durs)
        out[key] = {"count": len(durs), "max_ns": max(durs), "total_ns": sum(durs), **{k: int(np.percentile(d, q)) for k, q in QS}}
    return out


def test_stats_of_the_dataloader_trace_match_numpy(shared_data):
    path = shared_data / "pytorch-dataloader-starvation.db"
    with open_trace(path) as db:
        stats = op_stats(db)
    expected = independent_stats(path)
    got = {(s["source_id"], s["op_id"]): {k: s[k] for k in ("count", "max_ns", "total_ns", "p50_ns", "p95_ns", "p99_ns", "p999_ns")} for s in stats}
    assert got == expected
    # Sorted by total time; names come from the file's own tables.
    assert [s["total_ns"] for s in stats] == sorted((s["total_ns"] for s in stats), reverse=True)
    top = stats[0]
    assert (top["source"], top["op"], top["count"], top["errors"]) == ("HOST", "sched_switch", 3676, 0)
    assert {s["op"] for s in stats} >= {"cudaStreamSync", "cudaLaunchKernel", "cuLaunchKernel", "process_fork"}
    assert sum(s["count"] for s in stats) == 3807


def test_filters_by_pid_source_and_time(shared_data):
    path = shared_data / "pytorch-dataloader-starvation.db"
    with open_trace(path) as db:
        by_pid = op_stats(db, pid=2233)
        cuda = op_stats(db, source="cuda")
        t0 = 1774015600000000000
        late = op_stats(db, since_ns=t0)
        window = op_stats(db, since_ns=t0, until_ns=t0 + 10**10)
    assert {(s["source_id"], s["op_id"]): s["count"] for s in by_pid} == {k: v["count"] for k, v in independent_stats(path, "WHERE pid = ?", (2233,)).items()}
    assert {s["source"] for s in cuda} == {"CUDA"} and sum(s["count"] for s in cuda) == 61
    assert sum(s["count"] for s in late) == sum(v["count"] for v in independent_stats(path, "WHERE timestamp >= ?", (t0,)).values())
    assert sum(s["count"] for s in window) == sum(
        v["count"] for v in independent_stats(path, "WHERE timestamp BETWEEN ? AND ?", (t0, t0 + 10**10)).values()
    )


def test_unknown_source_is_one_clear_error(shared_data):
    with open_trace(shared_data / "sample-cluster.db") as db:
        with pytest.raises(StoreError, match=r"No source named 'gpu' in .*sample-cluster.db \(sources: CUDA, .*\)"):
            op_stats(db, source="gpu")


def test_text_ids_of_cluster_traces_are_fine(shared_data):
    with open_trace(shared_data / "sample-cluster.db") as db:
        stats = op_stats(db)
    assert {(s["source"], s["op"]): s["count"] for s in stats} == {
        ("HOST", "sched_switch"): 219,
        ("IO", "block_write"): 207,
        ("IO", "block_read"): 98,
        ("DRIVER", "cuMemAlloc"): 76,
    }


def test_errors_per_source_semantics(tmp_path):
    # GIVEN CUDA calls failing with 2 codes, syscalls with -errno and positive byte counts, host events with ret set
    rows = np.zeros(9, EVENT_ROW_DTYPE)
    rows["timestamp"] = np.arange(9) + 10**18
    rows["source"] = [1, 1, 1, 1, 8, 8, 8, 3, 3]
    rows["op"] = [3, 3, 3, 3, 0, 0, 0, 1, 1]
    rows["ret_code"] = [0, 2, 2, 700, -11, 4096, -11, 1234, 0]
    rows["duration"] = [10, 20, 30, 40, 1, 2, 3, 100, 200]
    path = tmp_path / "t.db"
    with Writer(path) as w:
        w.put_events(rows)
    with open_trace(path) as db:
        stats = {(s["source"], s["op"]): s for s in op_stats(db)}
    launch = stats[("CUDA", "cudaLaunchKernel")]
    assert (launch["count"], launch["errors"], launch["error_codes"]) == (4, 3, {2: 2, 700: 1})
    assert (launch["p50_ns"], launch["mean_ns"], launch["total_ns"], launch["max_ns"]) == (25, 25, 100, 40)
    read = stats[("SYSCALL", "read")]  # named from the syscall table when the trace stores no name
    assert (read["errors"], read["error_codes"]) == (2, {-11: 2})
    switch = stats[("HOST", "sched_switch")]
    assert (switch["errors"], switch["error_codes"]) == (0, {})


def test_quantiles_truncate_linear_interpolation(tmp_path):
    rows = np.zeros(4, EVENT_ROW_DTYPE)
    rows["source"], rows["op"] = 1, 1
    rows["duration"] = [1, 2, 4, 1000]  # p95 = 850.6 → 850: int() truncates
    path = tmp_path / "t.db"
    with Writer(path) as w:
        w.put_events(rows)
    with open_trace(path) as db:
        (s,) = op_stats(db)
    d = np.array([1, 2, 4, 1000])
    assert [s[k] for k, _ in QS] == [int(np.percentile(d, q)) for _, q in QS] == [3, 850, 970, 997]


def test_no_events_gives_an_empty_list(tmp_path):
    path = tmp_path / "t.db"
    Writer(path).close()
    with open_trace(path) as db:
        assert op_stats(db) == []


def test_units_read_the_way_people_type_them():
    from whyprobe.units import fmt_bytes, fmt_count, fmt_ns

    assert [fmt_ns(v) for v in (0, 999, 1_234, 25_799_899, 1_473_425_940, 441_155_025, -2_500)] == [
        "0 ns", "999 ns", "1.23 µs", "25.8 ms", "1.47 s", "441 ms", "-2.50 µs",
    ]  # fmt: skip
    assert [fmt_bytes(v) for v in (100, 1536, 2**20 * 300, 2**41)] == ["100 B", "1.50 KiB", "300 MiB", "2.00 TiB"]
    assert fmt_count(1234567) == "1,234,567"
