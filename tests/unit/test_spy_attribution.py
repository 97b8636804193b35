"""Which overlapping tool calls footprint tells apart by thread (analyze/footprint.py)."""

from __future__ import annotations

import pytest

from whyprobe.analyze.footprint import Footprint, mark_attribution


def call(cid: int, start: int, end: int, tid: int, server: int = 10) -> Footprint:
    return Footprint(cid, "t", server, start, end, False, handler_tid=tid)


@pytest.mark.parametrize(
    "calls, want",
    [
        ([call(1, 0, 10, 11), call(2, 20, 30, 11)], ["exclusive", "exclusive"]),  # one after the other
        ([call(1, 0, 10, 11), call(2, 5, 15, 12)], ["thread", "thread"]),  # thread per request
        ([call(1, 0, 10, 11), call(2, 5, 15, 11)], ["shared", "shared"]),  # one writer thread answers both
        ([call(1, 0, 10, 11), call(2, 5, 15, 0)], ["shared", "shared"]),  # a handler unknown
        # A chain: 1 overlaps 2, 2 overlaps 3, and 1 and 3 share a thread: no per-thread split.
        ([call(1, 0, 10, 11), call(2, 5, 25, 12), call(3, 20, 30, 11)], ["shared"] * 3),
        ([call(1, 0, 10, 11), call(2, 5, 15, 11, server=20)], ["exclusive", "exclusive"]),  # other server
        ([call(1, 0, 10, 11), call(2, 10, 20, 12)], ["exclusive", "exclusive"]),  # touching, not overlapping
    ],
)
def test_attribution(calls, want) -> None:
    mark_attribution(calls)
    assert [c.attribution for c in sorted(calls, key=lambda c: c.call_id)] == want
