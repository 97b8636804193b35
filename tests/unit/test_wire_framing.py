"""Stdio line framing, HTTP/SSE parsing, the size cap and capture gaps."""

from __future__ import annotations

import json

from wire_fixtures import call_chunks

from whyprobe.mcpwire.http import HttpStream
from whyprobe.mcpwire.jsonrpc import Frame, LineFramer, decode, scan_prefix
from whyprobe.mcpwire.pipeline import WirePipeline
from whyprobe.events import PL_PIPE, PL_TCP, PayloadKind

CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "upload", "arguments": {"blob": "x" * 5000}}}


def test_lines_split_and_glued_with_garbage() -> None:
    f = LineFramer()
    stream = b'{"jsonrpc":"2.0","id":1,"method":"a"}\nnot json at all\n{"jsonrpc":"2.0","method":"b"}\n\n'
    stream += b'junk{"jsonrpc":"2.0","id":2,"result":{}}\n{"unrelated": true}\n'
    frames = [fr for i in range(len(stream)) for fr in f.feed(stream[i : i + 1], i)]
    msgs = [m for fr in frames for m in decode(fr)]
    assert [(m.kind, m.id, m.method) for m in msgs] == [("request", 1, "a"), ("notification", None, "b"), ("response", 2, None)]
    assert frames[0].ts_ns == 0 and frames[0].size == 38


def test_cap_truncates_but_keeps_method_id_and_tool() -> None:
    p = WirePipeline(max_message_bytes=1000)
    data = json.dumps(CALL).encode() + b"\n"
    out = []
    for h, d in call_chunks(1, 5, 100, 3, data, PayloadKind.WRITE, PL_PIPE):
        out += p.feed(h, d)
    (m,) = out
    assert (m.kind, m.jsonrpc_id, m.method, m.tool_name, m.truncated, m.size) == ("request", "7", "tools/call", "upload", True, len(data))
    assert len(m.payload) <= 1000 and m.payload.startswith('{"jsonrpc"')


def test_capture_truncated_call_then_next_message_resyncs() -> None:
    """The kernel kept 2000 of a 6000-byte write: the message is reported truncated, the next one whole."""
    p = WirePipeline(capture_cap=2000)
    big = json.dumps(CALL).encode() + b"\n"
    out = []
    for h, d in call_chunks(1, 5, 100, 3, big, PayloadKind.WRITE, PL_PIPE, cap=2000):
        out += p.feed(h, d)
    for h, d in call_chunks(2, 5, 100, 3, b'{"jsonrpc":"2.0","id":8,"method":"ping"}\n', PayloadKind.WRITE, PL_PIPE):
        out += p.feed(h, d)
    assert [(m.jsonrpc_id, m.truncated, m.size) for m in out] == [("7", True, len(big)), ("8", False, 41)]
    assert p.stats.lost_bytes == len(big) - 2000


def test_scan_prefix_finds_top_level_keys_only() -> None:
    cut = b'{"jsonrpc":"2.0","result":{"id":99,"method":"nested"},"id":3'
    rpc = scan_prefix(cut)
    assert (rpc.kind, rpc.id, rpc.method) == ("response", 3, None)
    assert decode(Frame(b'{"jsonrpc":"2.0","id":4,"method":"tools/ca', 0, 9999, truncated=True))[0].method is None
    assert scan_prefix(b"garbage") is None


def _http_msgs(data: bytes, step: int):
    h = HttpStream()
    out = []
    for i in range(0, len(data), step):
        out += h.feed(data[i : i + step], i)
    return h, out


def test_http_chunked_sse_multiline_data_and_garbage_resync() -> None:
    sse = (b"event: message\r\ndata: {\"jsonrpc\":\"2.0\",\r\ndata: \"method\":\"notifications/progress\"}\r\n\r\n"
           b": keepalive\r\n\r\nid: 2\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\r\n\r\n")
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(sse[i : i + 10]), sse[i : i + 10]) for i in range(0, len(sse), 10)) + b"0\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nMcp-Session-Id: s1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    body = b'[{"jsonrpc":"2.0","id":5,"method":"a"}]'
    post = b"POST /mcp HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    for step in (1, 7, 4096):
        h, out = _http_msgs(resp + b"\x16\x03\x01 garbage bytes\r\n" + resp + post, step)
        datas = [(head.status, head.session_id, fr.data) for head, fr in out]
        assert datas[0] == (200, "s1", b'{"jsonrpc":"2.0",\n"method":"notifications/progress"}')
        assert len(datas) == 5 and datas[2] == datas[0] and datas[4][2] == body
        assert [m.method for m in decode(datas[0][2] and out[0][1])] == ["notifications/progress"]
        assert h.garbage_bytes > 0
    _, out = _http_msgs(post, 3)
    ((head, fr),) = out
    assert (head.method, head.path, head.content_type, fr.data) == ("POST", "/mcp", "application/json", body)


def test_http_get_stream_never_ending_yields_events_as_they_come() -> None:
    h = HttpStream()
    assert h.feed(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n", 1) == []
    (head, fr), = h.feed(b'data: {"jsonrpc":"2.0","id":1,"method":"roots/list"}\n\n', 2)
    assert fr.ts_ns == 2 and decode(fr)[0].method == "roots/list"


def test_http_over_tcp_pipeline_with_gap_in_body() -> None:
    p = WirePipeline(capture_cap=100)
    body = json.dumps(CALL).encode()
    data = b"POST /mcp HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    nxt = b'POST /mcp HTTP/1.1\r\nContent-Length: 40\r\n\r\n{"jsonrpc":"2.0","id":9,"method":"ping"}'
    out = []
    for ts, d in ((1, data), (2, nxt)):
        for h, part in call_chunks(ts, 0x1, 100, 3, d, PayloadKind.WRITE, PL_TCP, cap=100):
            out += p.feed(h, part)
    assert [(m.jsonrpc_id, m.truncated, m.transport) for m in out] == [("7", True, "http"), ("9", False, "http")]


def test_non_mcp_streams_ignored() -> None:
    p = WirePipeline()
    out = []
    for ts, blob in enumerate([b"\x00\x01binary", b"hello world\n", b"\x16\x03\x01\x02\x00"]):
        for h, d in call_chunks(ts, 0x3, 100, 3, blob, PayloadKind.WRITE, PL_TCP):
            out += p.feed(h, d)
    assert out == [] and p.flush() == []
