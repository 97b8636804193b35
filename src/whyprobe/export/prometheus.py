"""Live Prometheus metrics for `whyprobe trace --metrics :9464`.

The drain hands whole numpy batches to `TraceMetrics.observe`; per-op bucket
counts are computed with one searchsorted + bincount per batch and kept as
plain arrays. A custom collector exposes them as a HistogramMetricFamily at
scrape time, so no prometheus_client object is touched per event.

Metrics (private registry, nothing global):
  whyprobe_op_duration_seconds{source,op}   histogram of call / interval durations
  whyprobe_events_total{source,op}          events seen
  whyprobe_dropped_events_total{reason}     ring | queue | rate (totals from set_drops)
  whyprobe_payloads_lost_total              payload records (paths, argv, bytes) lost; their events are kept
"""

from __future__ import annotations

import threading
from typing import Callable, Iterator

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from whyprobe.errors import CommandError
from whyprobe.events import Source, op_name
from whyprobe.units import UnitError, parse_hostport

__all__ = ["TraceMetrics", "BUCKET_BOUNDS_NS", "DROP_REASONS"]

# 1-2-5 steps from 1 µs to 10 s: fixed, log-spaced, readable `le` labels.
BUCKET_BOUNDS_NS = np.array([m * 10**e for e in range(3, 10) for m in (1, 2, 5)] + [10**10], dtype=np.int64)
DROP_REASONS = ("ring", "queue", "rate")


class TraceMetrics:
    """Per-op duration histograms, event counters and drop counters on a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._nb = len(BUCKET_BOUNDS_NS) + 1  # + the +Inf bucket
        self._counts: dict[int, np.ndarray] = {}  # key (source << 32 | op) → per-bucket counts, not cumulative
        self._sums: dict[int, int] = {}  # key → total duration ns
        self._drops = dict.fromkeys(DROP_REASONS, 0)
        self.payloads_lost = 0
        self._labels: dict[int, tuple[str, str]] = {}
        self.registry.register(_Collector(self))

    def observe(self, records: np.ndarray) -> None:
        """Add a batch; `records` needs fields source, op and duration (or duration_ns), in ns."""
        if len(records) == 0:
            return
        names = records.dtype.names or ()
        duration = records["duration" if "duration" in names else "duration_ns"].astype(np.int64, copy=False)
        keys = (records["source"].astype(np.int64) << 32) | records["op"].astype(np.int64)
        uniq, group = np.unique(keys, return_inverse=True)
        bucket = np.searchsorted(BUCKET_BOUNDS_NS, duration, side="left")  # first bound >= d: Prometheus `le`
        counts = np.bincount(group * self._nb + bucket, minlength=len(uniq) * self._nb).reshape(len(uniq), self._nb)
        sums = np.zeros(len(uniq), dtype=np.int64)
        np.add.at(sums, group, duration)
        with self._lock:
            for i, key in enumerate(uniq.tolist()):
                if key in self._counts:
                    self._counts[key] += counts[i]
                    self._sums[key] += int(sums[i])
                else:
                    self._counts[key] = counts[i].copy()
                    self._sums[key] = int(sums[i])
                    self._labels[key] = _labels(key)

    def set_drops(self, *, ring: int | None = None, queue: int | None = None, rate: int | None = None, payload: int | None = None) -> None:
        """Set the running totals of dropped events, and of lost payload records (cumulative counts, as the kernel and writer keep them)."""
        with self._lock:
            if payload is not None:
                self.payloads_lost = int(payload)
            for reason, value in (("ring", ring), ("queue", queue), ("rate", rate)):
                if value is not None:
                    self._drops[reason] = int(value)

    def snapshot(self) -> tuple[dict[int, np.ndarray], dict[int, int], dict[str, int], dict[int, tuple[str, str]]]:
        with self._lock:
            return ({k: v.copy() for k, v in self._counts.items()}, dict(self._sums), dict(self._drops), dict(self._labels))

    def serve(self, addr: str) -> Callable[[], None]:
        """Serve /metrics on addr (':9464' binds loopback); returns a function that stops the server."""
        try:
            host, port = parse_hostport(addr)
        except UnitError as exc:
            raise CommandError(f"--metrics {addr!r}: {exc}", exit_code=2) from None
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise CommandError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop


class _Collector:
    def __init__(self, metrics: TraceMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        counts, sums, drops, labels = self._metrics.snapshot()
        hist = HistogramMetricFamily(
            "whyprobe_op_duration_seconds", "Duration of traced calls and intervals, per source and op.", labels=["source", "op"]
        )
        events = CounterMetricFamily("whyprobe_events", "Events seen while tracing, per source and op.", labels=["source", "op"])
        bounds = [_le(b) for b in BUCKET_BOUNDS_NS.tolist()] + ["+Inf"]
        for key in sorted(counts):
            cumulative = np.cumsum(counts[key]).tolist()
            hist.add_metric(list(labels[key]), list(zip(bounds, cumulative)), sum_value=sums[key] / 1e9)
            events.add_metric(list(labels[key]), cumulative[-1])
        yield hist
        yield events
        dropped = CounterMetricFamily("whyprobe_dropped_events", "Events lost, by reason: ring (kernel), queue (writer), rate (cap).", labels=["reason"])
        for reason in DROP_REASONS:
            dropped.add_metric([reason], drops[reason])
        yield dropped
        lost = CounterMetricFamily("whyprobe_payloads_lost", "Payload records (paths, argv, addresses, MCP bytes) lost in the kernel; their events are kept.")
        lost.add_metric([], self._metrics.payloads_lost)
        yield lost


def _labels(key: int) -> tuple[str, str]:
    source, op = key >> 32, key & 0xFFFFFFFF
    source_name = Source(source).name.lower() if source in Source._value2member_map_ else str(source)
    return source_name, op_name(source, op)


def _le(bound_ns: int) -> str:
    return repr(bound_ns / 1e9)
