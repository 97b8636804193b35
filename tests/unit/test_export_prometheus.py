"""Live Prometheus metrics: exact bucket counts and sums over a real HTTP scrape."""

from __future__ import annotations

import socket
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from testkit import free_port

from whyprobe.errors import CommandError
from whyprobe.export.prometheus import BUCKET_BOUNDS_NS, TraceMetrics
from whyprobe.events import EVENT_DTYPE, EVENT_ROW_DTYPE, Source


def _records(rows: list[tuple[int, int, int]]) -> np.ndarray:
    records = np.zeros(len(rows), EVENT_DTYPE)
    for i, (source, op, duration) in enumerate(rows):
        records[i]["source"], records[i]["op"], records[i]["duration_ns"] = source, op, duration
    return records


def _scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_histograms_counters_and_drops_over_http() -> None:
    # GIVEN two batches of launches (exactly on, below and above bucket bounds) and syncs
    metrics = TraceMetrics()
    launches = [1_000, 999, 1_001, 5_000, 20_000_000_000]  # 1µs (le=1e-06), below, just above, 5µs, beyond 10s
    metrics.observe(_records([(Source.CUDA, 3, d) for d in launches[:3]] + [(Source.CUDA, 5, 2_000_000)]))
    metrics.observe(_records([(Source.CUDA, 3, d) for d in launches[3:]] + [(Source.HOST, 1, 30_000)] * 3))
    metrics.set_drops(ring=7, queue=2)
    metrics.set_drops(rate=1, payload=11)
    port = free_port()
    stop = metrics.serve(f":{port}")
    try:
        families = _scrape(port)
    finally:
        stop()
    # THEN the launch histogram has exact cumulative buckets and sum
    samples = [s for s in families["whyprobe_op_duration_seconds"].samples if s.labels.get("op") == "cudaLaunchKernel"]
    buckets = {float(s.labels["le"]): s.value for s in samples if s.name.endswith("_bucket")}
    assert buckets[1e-06] == 2  # 999 and 1000 ns (le is inclusive)
    assert buckets[2e-06] == 3
    assert buckets[5e-06] == 4
    assert buckets[10.0] == 4
    assert buckets[float("inf")] == 5
    assert len(buckets) == len(BUCKET_BOUNDS_NS) + 1
    assert {s.labels["source"] for s in samples} == {"cuda"}
    by_name = {s.name: s.value for s in samples if not s.name.endswith("_bucket")}
    assert by_name["whyprobe_op_duration_seconds_count"] == 5
    assert by_name["whyprobe_op_duration_seconds_sum"] == pytest.approx(sum(launches) / 1e9, abs=1e-12)
    sched = [s for s in families["whyprobe_op_duration_seconds"].samples if s.labels.get("op") == "sched_switch" and s.labels.get("le") == "5e-05"]
    assert [s.value for s in sched] == [3]
    # AND event counters per source/op
    events = {(s.labels["source"], s.labels["op"]): s.value for s in families["whyprobe_events"].samples if s.name == "whyprobe_events_total"}
    assert events == {("cuda", "cudaLaunchKernel"): 5, ("cuda", "cudaStreamSynchronize"): 1, ("host", "sched_switch"): 3}
    # AND drop totals per reason
    drops = {s.labels["reason"]: s.value for s in families["whyprobe_dropped_events"].samples if s.name == "whyprobe_dropped_events_total"}
    assert drops == {"ring": 7, "queue": 2, "rate": 1}
    # AND lost payload records apart from them (their events were kept)
    assert [s.value for s in families["whyprobe_payloads_lost"].samples if s.name == "whyprobe_payloads_lost_total"] == [11]


def test_observe_accepts_stored_event_rows() -> None:
    rows = np.zeros(2, EVENT_ROW_DTYPE)
    rows["source"], rows["op"], rows["duration"], rows["ret_code"] = Source.DRIVER, 1, [10, 3_000], [0, 700]
    metrics = TraceMetrics()
    metrics.observe(rows)
    metrics.observe(rows[:0])
    ops, drops = metrics.snapshot()
    counts, total_ns, errors = ops[(int(Source.DRIVER), 1)]
    assert counts[:4].tolist() == [1, 0, 1, 0]  # bounds 1, 2, 5, 10 µs: 10 ns ≤ 1µs; 3 µs ≤ 5µs
    assert (total_ns, errors) == (3_010, 1)
    assert drops == {"ring": 0, "queue": 0, "rate": 0}


def test_serve_refuses_bad_or_busy_addresses() -> None:
    metrics = TraceMetrics()
    with pytest.raises(CommandError, match=r"^--metrics 'nope': expected an address like :9464"):
        metrics.serve("nope")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CommandError, match=rf"^cannot serve metrics on 127.0.0.1:{port}: Address already in use$"):
            metrics.serve(f"127.0.0.1:{port}")
