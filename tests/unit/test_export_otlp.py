"""OTLP export against a real OTLP/HTTP receiver on loopback that decodes the protobuf."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest, ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse

from export_synth import T0, make_db
from whyprobe.commands import main
from whyprobe.export.prometheus import BUCKET_BOUNDS_NS


class Receiver:
    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.paths: list[str] = []


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            state.paths.append(self.path)
            if self.path == "/v1/traces":
                state.traces.append(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
            elif self.path == "/v1/metrics":
                state.metrics.append(ExportMetricsServiceRequest.FromString(body))
                reply = ExportMetricsServiceResponse().SerializeToString()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _attrs(items) -> dict:
    out = {}
    for kv in items:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind)
    return out


def test_spans_and_histograms_reach_the_receiver(tmp_path: Path, receiver, capsys) -> None:
    state, url = receiver
    db = make_db(tmp_path / "t.db")
    # WHEN exporting CUDA calls of at least 5 µs
    assert main(["export", str(db), "--otlp", url, "--min-duration", "5us"]) == 0
    assert capsys.readouterr().err == f"Sent 5 spans (1 MCP tool calls) and 8 duration histograms to {url}\n"
    assert state.paths == ["/v1/traces", "/v1/metrics"]
    resource_spans = [rs for req in state.traces for rs in req.resource_spans]
    assert _attrs(resource_spans[0].resource.attributes)["service.name"] == "whyprobe"
    spans = [s for rs in resource_spans for ss in rs.scope_spans for s in ss.spans]
    by_name = {s.name: s for s in spans}
    # THEN one span per CUDA/driver call >= 5 µs (the 1 µs cuLaunchKernel is left out) and one per tool call
    assert sorted(by_name) == ["cudaLaunchKernel", "cudaMalloc", "cudaMemcpy", "cudaStreamSynchronize", "tools/call read_file"]
    # AND times come from the trace
    sync = by_name["cudaStreamSynchronize"]
    assert (sync.start_time_unix_nano, sync.end_time_unix_nano) == (T0 + 100_000, T0 + 2_100_000)
    assert sync.status.code == 2  # STATUS_CODE_ERROR: return code 700
    assert _attrs(sync.attributes)["cuda.return_code"] == 700
    assert (_attrs(sync.attributes)["process.pid"], _attrs(sync.attributes)["thread.id"]) == (100, 100)
    # AND the tool call follows the MCP / GenAI conventions
    call = by_name["tools/call read_file"]
    assert (call.start_time_unix_nano, call.end_time_unix_nano) == (T0 + 3_000_000, T0 + 5_000_000)
    assert call.kind == 2  # SPAN_KIND_SERVER
    attributes = _attrs(call.attributes)
    assert {k: attributes[k] for k in ("mcp.method.name", "gen_ai.tool.name", "gen_ai.operation.name", "mcp.session.id", "network.transport", "jsonrpc.request.id")} == {
        "mcp.method.name": "tools/call",
        "gen_ai.tool.name": "read_file",
        "gen_ai.operation.name": "execute_tool",
        "mcp.session.id": "sess-1",
        "network.transport": "tcp",
        "jsonrpc.request.id": "7",
    }
    assert attributes["whyprobe.syscalls"] == 12
    # AND the cudaMalloc made inside the tool call is its child; the others are roots
    malloc = by_name["cudaMalloc"]
    assert (malloc.trace_id, malloc.parent_span_id) == (call.trace_id, call.span_id)
    assert by_name["cudaMemcpy"].parent_span_id == b""
    # AND one duration histogram per op over every event with a duration, in fixed buckets
    metrics = [m for req in state.metrics for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    assert [m.name for m in metrics] == ["whyprobe.op.duration"]
    points = {(_attrs(p.attributes)["whyprobe.source"], _attrs(p.attributes)["whyprobe.op"]): p for p in metrics[0].histogram.data_points}
    assert set(points) == {
        ("cuda", "cudaLaunchKernel"), ("cuda", "cudaMemcpy"), ("cuda", "cudaStreamSynchronize"), ("cuda", "cudaMalloc"),
        ("driver", "cuLaunchKernel"), ("host", "sched_switch"), ("io", "block_read"), ("io", "block_write"),
    }
    offcpu = points[("host", "sched_switch")]
    assert (offcpu.count, offcpu.sum) == (2, pytest.approx(0.00103))  # 30 µs + 1 ms, unaffected by --min-duration
    assert list(offcpu.explicit_bounds) == (BUCKET_BOUNDS_NS / 1e9).tolist()
    # bounds 1, 2, 5, 10, 20, 50 µs ...: 30 µs counts in le=50µs (index 5), 1 ms in le=1ms (index 9)
    assert [i for i, n in enumerate(offcpu.bucket_counts) if n] == [5, 9]
    assert points[("driver", "cuLaunchKernel")].count == 1
    assert points[("cuda", "cudaStreamSynchronize")].sum == pytest.approx(0.002)


def test_unreachable_receiver_is_one_line(tmp_path: Path, capsys) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    db = make_db(tmp_path / "t.db")
    assert main(["export", str(db), "--otlp", f"http://127.0.0.1:{port}"]) == 1
    assert capsys.readouterr().err == f"whyprobe: cannot reach OTLP receiver at 127.0.0.1:{port}: Connection refused\n"
    assert main(["export", str(db), "--otlp", "ftp://x"]) == 2
    assert capsys.readouterr().err == "whyprobe: --otlp 'ftp://x': expected an OTLP/HTTP base URL like http://127.0.0.1:4318\n"


def test_receiver_errors_are_one_line(tmp_path: Path, receiver, capsys) -> None:
    state, url = receiver
    db = make_db(tmp_path / "t.db")
    assert main(["export", str(db), "--otlp", url + "/wrong"]) == 1
    assert capsys.readouterr().err == f"whyprobe: OTLP receiver at {url}/wrong/v1/traces refused the spans (see -vv for the HTTP error)\n"
