"""Live Prometheus metrics for `whyprobe trace --metrics :9464`.

The drain hands whole numpy batches to `TraceMetrics.observe`, which feeds them to
analyze/stats.py's OpAccumulator (the statistics `stats`, the live view and the MCP
server report) with the bucket bounds below. A custom collector exposes its counts
at scrape time, so no prometheus_client object is touched per event.

Metrics (private registry, nothing global):
  whyprobe_op_duration_seconds{source,op}   histogram of call / interval durations
  whyprobe_events_total{source,op}          events seen
  whyprobe_errors_total{source,op}          failed calls (analyze.stats.failed: the rule `stats` counts by)
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
from whyprobe.analyze.stats import OpAccumulator, op_label, source_label
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
        self._stats = OpAccumulator(BUCKET_BOUNDS_NS, exact_cap=0)  # buckets, counts, sums, errors: no durations kept
        self._drops = dict.fromkeys(DROP_REASONS, 0)
        self.payloads_lost = 0
        self.registry.register(_Collector(self))

    def observe(self, records: np.ndarray) -> None:
        """Add a batch: ring records (duration_ns, ret) or stored rows (duration, ret_code), in ns."""
        if len(records) == 0:
            return
        names = records.dtype.names or ()
        duration = records["duration" if "duration" in names else "duration_ns"]
        ret = records["ret_code"] if "ret_code" in names else records["ret"] if "ret" in names else np.zeros(len(records), np.int64)
        with self._lock:
            self._stats.add(records["source"], records["op"], duration, ret)

    def set_drops(self, *, ring: int | None = None, queue: int | None = None, rate: int | None = None, payload: int | None = None) -> None:
        """Set the running totals of dropped events, and of lost payload records (cumulative counts, as the kernel and writer keep them)."""
        with self._lock:
            if payload is not None:
                self.payloads_lost = int(payload)
            for reason, value in (("ring", ring), ("queue", queue), ("rate", rate)):
                if value is not None:
                    self._drops[reason] = int(value)

    def snapshot(self) -> tuple[dict[tuple[int, int], tuple[np.ndarray, int, int]], dict[str, int]]:
        """((source, op) → (per-bucket counts, not cumulative; total ns; errors), drop totals)."""
        with self._lock:
            ops = {k: (st.bounded.copy(), st.total, sum(st.codes.values())) for k, st in self._stats.ops.items()}
            return ops, dict(self._drops)

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
        ops, drops = self._metrics.snapshot()
        hist = HistogramMetricFamily(
            "whyprobe_op_duration_seconds", "Duration of traced calls and intervals, per source and op.", labels=["source", "op"]
        )
        events = CounterMetricFamily("whyprobe_events", "Events seen while tracing, per source and op.", labels=["source", "op"])
        errors = CounterMetricFamily("whyprobe_errors", "Failed calls (non-zero CUDA codes, negative syscall returns), per source and op.",
                                     labels=["source", "op"])
        bounds = [_le(b) for b in BUCKET_BOUNDS_NS.tolist()] + ["+Inf"]
        for (source, op) in sorted(ops):
            counts, total_ns, failed = ops[(source, op)]
            labels = list(_labels(source, op))
            cumulative = np.cumsum(counts).tolist()
            hist.add_metric(labels, list(zip(bounds, cumulative)), sum_value=total_ns / 1e9)
            events.add_metric(labels, cumulative[-1])
            errors.add_metric(labels, failed)
        yield hist
        yield events
        yield errors
        dropped = CounterMetricFamily("whyprobe_dropped_events", "Events lost, by reason: ring (kernel), queue (writer), rate (cap).", labels=["reason"])
        for reason in DROP_REASONS:
            dropped.add_metric([reason], drops[reason])
        yield dropped
        lost = CounterMetricFamily("whyprobe_payloads_lost", "Payload records (paths, argv, addresses, MCP bytes) lost in the kernel; their events are kept.")
        lost.add_metric([], self._metrics.payloads_lost)
        yield lost


def _labels(source: int, op: int) -> tuple[str, str]:
    return source_label(source).lower(), op_label(source, op)


def _le(bound_ns: int) -> str:
    return repr(bound_ns / 1e9)
