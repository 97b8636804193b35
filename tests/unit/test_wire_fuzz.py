"""Hypothesis: random call splits, several interleaved connections, garbage between messages:
no crash, and every well-formed message comes out exactly once."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_fixtures import call_chunks

from whyprobe.mcpwire.http import HttpStream
from whyprobe.mcpwire.jsonrpc import decode
from whyprobe.mcpwire.pipeline import WirePipeline
from whyprobe.events import PL_PIPE, PL_TCP, PayloadKind

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
messages = st.builds(
    lambda i, method, text, big: {"jsonrpc": "2.0", "id": i, "method": method, "params": {"t": text, "pad": "p" * big}},
    st.integers(0, 10**6), st.sampled_from(["tools/call", "tools/list", "ping", "resources/read"]), texts,
    st.sampled_from([0, 0, 0, 5000, 9000]),
)
# Garbage ends at a newline (the stdio contract: a line is the unit of loss) and never contains one inside.
garbage = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"") + b"\n")


def _cuts(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)] if sizes else len(data)
        out.append(data[pos : pos + n])
        pos += n
        i += 1
    return out


@SETTINGS
@given(
    conns=st.lists(st.lists(st.tuples(messages, st.one_of(st.none(), garbage)), min_size=1, max_size=6), min_size=1, max_size=4),
    sizes=st.lists(st.integers(1, 6000), min_size=1, max_size=8),
    order=st.randoms(use_true_random=False),
)
def test_stdio_streams_interleaved_with_garbage(conns, sizes, order) -> None:
    calls = []  # per connection, its calls in order
    want = set()
    for c, items in enumerate(conns):
        stream = b""
        for j, (msg, junk) in enumerate(items):
            msg = dict(msg, id=f"{c}-{j}")
            stream += json.dumps(msg).encode() + b"\n" + (junk or b"")
            want.add(msg["id"])
        calls.append(_cuts(stream, sizes))
    pipe = WirePipeline()
    got = []
    ts = 0
    while any(calls):
        c = order.choice([i for i, q in enumerate(calls) if q])  # connections interleave at call boundaries
        ts += 1
        for h, d in call_chunks(ts, 1000 + c, 100 + c, 3, calls[c].pop(0), PayloadKind.WRITE, PL_PIPE):
            got += pipe.feed(h, d)
    got += pipe.flush()
    ids = [json.loads(m.jsonrpc_id) for m in got]
    assert sorted(ids) == sorted(want)
    assert all(m.connection == f"pipe:{1000 + int(json.loads(m.jsonrpc_id).split('-')[0])}" for m in got)


@SETTINGS
@given(
    bodies=st.lists(messages, min_size=1, max_size=5),
    junk=st.lists(st.binary(max_size=40), min_size=1, max_size=5),
    sse=st.booleans(),
    sizes=st.lists(st.integers(1, 3000), min_size=1, max_size=6),
)
def test_http_messages_survive_splits_and_garbage_between_messages(bodies, junk, sse, sizes) -> None:
    stream = b""
    for i, msg in enumerate(bodies):
        body = json.dumps(dict(msg, id=i)).encode()
        if sse:
            payload = b"event: message\r\ndata: " + body + b"\r\n\r\n"
            chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in _cuts(payload, sizes)) + b"0\r\n\r\n"
            stream += b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + chunked
        else:
            stream += b"POST /mcp HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        stream += junk[i % len(junk)].replace(b"HTTP/1.", b"").replace(b"POST ", b"")
    h = HttpStream()
    frames = []
    for piece in _cuts(stream, sizes):
        frames += h.feed(piece, 0)
    frames += h.flush()
    ids = [m.id for _, fr in frames for m in decode(fr)]
    assert ids == list(range(len(bodies)))


@SETTINGS
@given(data=st.binary(max_size=3000), kinds=st.lists(st.sampled_from(list(PayloadKind)), min_size=1, max_size=3),
       flags=st.sampled_from([PL_PIPE, PL_TCP, 0]))
def test_arbitrary_bytes_never_crash(data, kinds, flags) -> None:
    pipe = WirePipeline(max_message_bytes=500)
    for i, kind in enumerate(kinds):
        for h, d in call_chunks(i, 9, 100 + i, 3, b'{"jsonrpc":"2.0","id":1' + data, kind, flags, cap=1000):
            pipe.feed(h, d)
        for h, d in call_chunks(i, 9, 100 + i, 3, b"POST / HTTP/1.1\r\n" + data, kind, flags, cap=1000):
            pipe.feed(h, d)
    pipe.flush()
