"""OTLP/HTTP export: spans and a duration histogram per op, with the trace's own times.

Spans: one per CUDA runtime/driver call at least `min_duration_ns` long, and
one per MCP tool call following the OTel MCP and GenAI semantic conventions
(`mcp.method.name`, `gen_ai.tool.name`, `gen_ai.operation.name`,
`mcp.session.id`, `network.transport`). A CUDA call made inside a tool call's
window (tool_call_events) is that call's child span. Start and end times
come from the trace, never from the clock.

Metrics: `whyprobe.op.duration` (seconds), a histogram per (source, op) over
every event with a duration, with the same fixed buckets as the Prometheus
endpoint.

Spans and metrics are built with the SDK into memory and sent with the
OTLP/HTTP exporters directly, so a failed send is a result we can report
(one line), not a log message from a background thread.
"""

from __future__ import annotations

import logging
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlsplit

from opentelemetry import trace as trace_api
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult, MetricsData
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from whyprobe import __version__
from whyprobe.errors import CommandError
from whyprobe.export.prometheus import BUCKET_BOUNDS_NS
from whyprobe.export.timeline import category_of
from whyprobe.events import Source, op_name
from whyprobe.store.reader import TraceDB

__all__ = ["OtlpResult", "send_otlp", "otlp_endpoints", "DURATION_METRIC"]

DURATION_METRIC = "whyprobe.op.duration"
_SPAN_BATCH = 2048
_TRANSPORTS = {"stdio": "pipe", "unix": "unix", "http": "tcp", "https": "tcp"}
_CUDA_SOURCES = (int(Source.CUDA), int(Source.DRIVER))


@dataclass
class OtlpResult:
    spans: int
    tool_call_spans: int
    histogram_series: int


def otlp_endpoints(url: str) -> tuple[str, str]:
    """Base URL (http://host:4318[/prefix]) → (traces URL, metrics URL)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CommandError(f"--otlp {url!r}: expected an OTLP/HTTP base URL like http://127.0.0.1:4318", exit_code=2)
    base = url.rstrip("/")
    return f"{base}/v1/traces", f"{base}/v1/metrics"


def send_otlp(db: TraceDB, url: str, *, min_duration_ns: int = 0, timeout_s: float = 10.0) -> OtlpResult:
    """Build spans and metrics from db and POST them to the OTLP/HTTP receiver at url."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    traces_url, metrics_url = otlp_endpoints(url)
    _preflight(url, timeout_s)
    resource = _resource(db)
    spans, tool_spans = _build_spans(db, resource, min_duration_ns)
    metrics, series = _build_metrics(db, resource)
    with _quiet_otel():
        span_exporter = OTLPSpanExporter(endpoint=traces_url, timeout=timeout_s)
        try:
            for start in range(0, len(spans), _SPAN_BATCH):
                if span_exporter.export(spans[start : start + _SPAN_BATCH]) is not SpanExportResult.SUCCESS:
                    raise CommandError(f"OTLP receiver at {traces_url} refused the spans (see -vv for the HTTP error)")
        finally:
            span_exporter.shutdown()
        if metrics is not None:
            metric_exporter = OTLPMetricExporter(endpoint=metrics_url, timeout=timeout_s)
            try:
                if metric_exporter.export(metrics, timeout_millis=timeout_s * 1000) is not MetricExportResult.SUCCESS:
                    raise CommandError(f"OTLP receiver at {metrics_url} refused the metrics (see -vv for the HTTP error)")
            finally:
                metric_exporter.shutdown()
    return OtlpResult(spans=len(spans), tool_call_spans=tool_spans, histogram_series=series)


def _preflight(url: str, timeout_s: float) -> None:
    """Fail fast with one line when nothing listens (the exporter would retry until its deadline)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=min(timeout_s, 5)).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise CommandError(f"cannot reach OTLP receiver at {parts.hostname}:{port}: {reason}") from None


@contextmanager
def _quiet_otel() -> Iterator[None]:
    """The exporters log failures themselves; we report one line instead, unless -vv asked for detail."""
    logger = logging.getLogger("opentelemetry")
    previous = logger.level
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _resource(db: TraceDB) -> Resource:
    attributes = {"service.name": "whyprobe", "service.version": __version__, "whyprobe.database": db.path.name}
    if db.has("sessions", "hostname"):
        row = db.conn.execute("SELECT hostname FROM sessions WHERE hostname != '' ORDER BY id LIMIT 1").fetchone()
        if row:
            attributes["host.name"] = row[0]
    return Resource.create(attributes)


def _build_spans(db: TraceDB, resource: Resource, min_duration_ns: int) -> tuple[list, int]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("whyprobe.export", __version__)
    names = db.op_names()
    process_names = dict(db.conn.execute("SELECT pid, name FROM process_names")) if db.has("process_names") else {}

    calls = _tool_calls(db)
    parent_of: dict[int, trace_api.Span] = {}
    call_spans = []
    for call in calls:
        span = tracer.start_span(
            f"tools/call {call['tool_name']}",
            kind=trace_api.SpanKind.SERVER,
            start_time=call["started_at"],
            attributes=_tool_call_attributes(call),
        )
        if call["is_error"]:
            span.set_status(trace_api.Status(trace_api.StatusCode.ERROR))
        call_spans.append((span, call["started_at"] + call["duration"]))
        for event_id in call["event_ids"]:
            parent_of[event_id] = span

    placeholders = ", ".join("?" * len(_CUDA_SOURCES))
    events = db.load_events(f"source IN ({placeholders}) AND duration >= ?", (*_CUDA_SOURCES, min_duration_ns))
    for eid, ts, pid, tid, source, op, dur, arg0, arg1, arg2, ret, stack_hash in events[
        ["id", "timestamp", "pid", "tid", "source", "op", "duration", "arg0", "arg1", "arg2", "ret_code", "stack_hash"]
    ].tolist():
        parent = parent_of.get(eid)
        context = trace_api.set_span_in_context(parent) if parent is not None else None
        attributes = {
            "whyprobe.source": "cuda" if source == Source.CUDA else "driver",
            "whyprobe.event_id": eid,
            "process.pid": pid,
            "thread.id": tid,
            "cuda.return_code": ret,
            "whyprobe.arg0": arg0,
            "whyprobe.arg1": arg1,
            "whyprobe.arg2": arg2,
        }
        if pid in process_names:
            attributes["process.executable.name"] = process_names[pid]
        span = tracer.start_span(names.get((source, op)) or op_name(source, op), context=context, start_time=ts, attributes=attributes)
        if ret != 0:
            span.set_status(trace_api.Status(trace_api.StatusCode.ERROR, f"CUDA error {ret}"))
        span.end(end_time=ts + dur)
    for span, end in call_spans:
        span.end(end_time=end)
    provider.shutdown()
    return list(memory.get_finished_spans()), len(call_spans)


def _tool_calls(db: TraceDB) -> list[dict]:
    if not db.has("tool_calls"):
        return []
    joined = db.has("mcp_messages")
    extra = ", m.session_id, m.transport, m.jsonrpc_id" if joined else ", NULL, NULL, NULL"
    join = " LEFT JOIN mcp_messages m ON m.id = c.request_msg" if joined else ""
    rows = db.conn.execute(
        "SELECT c.id, c.server_pid, c.tool_name, c.started_at, c.duration, c.is_error, c.cpu_user_ns, c.cpu_sys_ns,"
        f" c.syscalls, c.block_bytes, c.cuda_calls{extra} FROM tool_calls c{join} ORDER BY c.started_at"
    ).fetchall()
    links: dict[int, list[int]] = {}
    if db.has("tool_call_events"):
        for call_id, event_id in db.conn.execute("SELECT call_id, event_id FROM tool_call_events"):
            links.setdefault(call_id, []).append(event_id)
    keys = ("id", "server_pid", "tool_name", "started_at", "duration", "is_error", "cpu_user_ns", "cpu_sys_ns",
            "syscalls", "block_bytes", "cuda_calls", "session_id", "transport", "jsonrpc_id")
    calls = [dict(zip(keys, row)) for row in rows]
    for call in calls:
        call["event_ids"] = links.get(call["id"], [])
    return calls


def _tool_call_attributes(call: dict) -> dict:
    attributes = {
        "mcp.method.name": "tools/call",
        "gen_ai.tool.name": call["tool_name"],
        "gen_ai.operation.name": "execute_tool",
        "process.pid": call["server_pid"],
        "whyprobe.tool_call.id": call["id"],
        "whyprobe.cpu_user_ns": call["cpu_user_ns"],
        "whyprobe.cpu_sys_ns": call["cpu_sys_ns"],
        "whyprobe.syscalls": call["syscalls"],
        "whyprobe.block_bytes": call["block_bytes"],
        "whyprobe.cuda_calls": call["cuda_calls"],
    }
    if call["session_id"]:
        attributes["mcp.session.id"] = call["session_id"]
    if call["transport"] in _TRANSPORTS:
        attributes["network.transport"] = _TRANSPORTS[call["transport"]]
    if call["jsonrpc_id"] is not None:
        attributes["jsonrpc.request.id"] = str(call["jsonrpc_id"])
    if call["is_error"]:
        attributes["error.type"] = "tool_error"
    return attributes


def _build_metrics(db: TraceDB, resource: Resource) -> tuple[MetricsData | None, int]:
    events = db.load_events("duration > 0")
    if len(events) == 0:
        return None, 0
    reader = InMemoryMetricReader()
    view = View(instrument_name=DURATION_METRIC, aggregation=ExplicitBucketHistogramAggregation((BUCKET_BOUNDS_NS / 1e9).tolist()))
    provider = MeterProvider(resource=resource, metric_readers=[reader], views=[view])
    histogram = provider.get_meter("whyprobe.export", __version__).create_histogram(
        DURATION_METRIC, unit="s", description="Duration of traced calls and intervals, per source and op."
    )
    names = db.op_names()
    series: dict[tuple[int, int], dict] = {}
    for source, op, dur in events[["source", "op", "duration"]].tolist():
        attributes = series.get((source, op))
        if attributes is None:
            source_name = Source(source).name.lower() if source in Source._value2member_map_ else str(source)
            attributes = {"whyprobe.source": source_name, "whyprobe.op": names.get((source, op)) or op_name(source, op),
                          "whyprobe.category": category_of(source, op)}
            series[(source, op)] = attributes
        histogram.record(dur / 1e9, attributes)
    data = reader.get_metrics_data()
    provider.shutdown()
    return data, len(series)
