"""Pure-Python parts of the trace: size/duration parsing, live latency stats, stack hashing,
the live view rendered from a fake snapshot, and the family registry."""

from __future__ import annotations

import io

import numpy as np
import pytest
from rich.console import Console

from whyprobe.commands.common import duration_s, ring_bytes
from whyprobe.errors import CommandError, ConfigError
from whyprobe.probes import available, families
from whyprobe.events import EVENT_DTYPE, Source
from whyprobe.analyze.stats import OpAccumulator
from whyprobe.record.session import OpStat, Snapshot, as_int64, fnv1a64, op_view
from whyprobe.ui.live import render_snapshot


def test_trace_units_errors_say_how():
    with pytest.raises(CommandError, match=r"^Invalid --ring '64 parsecs': expected a size"):
        ring_bytes("64 parsecs")
    with pytest.raises(CommandError, match=r"^Invalid --ring '1k': at least 4KiB$"):
        ring_bytes("1k")
    assert ring_bytes("64MiB") == 64 << 20 and duration_s("1.5s") == 1.5


def _records(durations, source=Source.CUDA, op=1, ret=0):
    r = np.zeros(len(durations), EVENT_DTYPE)
    r["duration_ns"] = durations
    r["source"], r["op"], r["ret"] = source, op, ret
    return r


def _add(stats: OpAccumulator, r: np.ndarray) -> None:
    stats.add(r["source"], r["op"], r["duration_ns"], r["ret"])


def test_live_op_view_quantiles_and_errors():
    stats = OpAccumulator()
    # 990 calls of 1 µs and 10 of 1 ms: p50 1 µs, p99 just above it, p99.9 about 1 ms
    _add(stats, _records([1000] * 990 + [1_000_000] * 10))
    _add(stats, _records([5000] * 4, op=3, ret=35))
    _add(stats, _records([10] * 3, source=Source.SYSCALL, op=0, ret=7))  # a read that returned 7 bytes is no error
    exact = {o.name: o for o in op_view(stats, {}, 0, exact=True)}
    assert (exact["cudaMalloc"].count, exact["cudaMalloc"].errors, exact["cudaMalloc"].p50_ns, exact["cudaMalloc"].p99_ns) == (1000, 0, 1000, int(np.percentile([1000] * 990 + [1_000_000] * 10, 99)))
    assert exact["cudaLaunchKernel"].errors == 4
    assert exact["read"].errors == 0
    # the cheap view the live display redraws reads the log buckets: within 9 %
    cheap = {o.name: o for o in op_view(stats, {}, 0, exact=False)}
    assert 1000 / 1.1 <= cheap["cudaMalloc"].p50_ns <= 1000 * 1.1
    (malloc,) = [s for s in stats.stats(exact=False) if s["op"] == "cudaMalloc"]
    assert 1_000_000 / 1.1 <= malloc["p999_ns"] <= 1_000_000 * 1.1


def test_rates_come_from_the_previous_counts():
    stats = OpAccumulator()
    _add(stats, _records([1000] * 50))
    (op,) = op_view(stats, {(int(Source.CUDA), 1): 30}, 0.25, exact=False)
    assert op.rate == 80.0


def test_stack_hash_is_fnv1a64_as_sqlite_integer():
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert as_int64(0xAF63DC4C8601EC8C) == 0xAF63DC4C8601EC8C - (1 << 64)


def test_live_view_renders_a_snapshot():
    drops = {"ring": 7, "rate": 0, "queue": 0, "payload": 5, "details_lost": 4,
             "by_family": {"cuda_session": {"events": 7, "payloads": 0}, "syscalls": {"events": 0, "payloads": 5}},
             "by_cpu": {"0": {"events": 7, "payloads": 2}, "1": {"events": 0, "payloads": 3}}}
    snap = Snapshot(12.5, (42,), (OpStat("cudaMemcpy", 1234, 98.0, 2_500_000, 40_000_000, 3),), 1300, drops)
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(render_snapshot(snap, "t.db"))
    text = console.file.getvalue()
    assert "cudaMemcpy" in text and "1,234" in text and "2.50 ms" in text and "40.0 ms" in text
    assert "events dropped: ring 7  rate 0  queue 0 (cuda_session 7; cpu0 7)" in text
    assert "payloads lost: 5 (syscalls 5; cpu0 2, cpu1 3); 4 events stored without detail" in text
    assert "elapsed 12.5 s   events 1,300   targets 42" in text
    # an op with no latency yet shows "-" rather than "0 ns"
    empty = Snapshot(0.5, (42,), (OpStat("cudaFree", 0, 0.0, 0, 0, 0),), 0, {})
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(render_snapshot(empty, "t.db"))
    row = next(line for line in console.file.getvalue().splitlines() if "cudaFree" in line)
    assert [c.strip() for c in row.split("│")][1:7] == ["cudaFree", "0", "0", "-", "-", ""]


def test_family_registry():
    assert "cuda" in available() and "wire" in available()
    (cuda,) = families(["cuda"], cuda={"libraries": ["/x/libcudart.so.12"]})
    assert cuda.name == "cuda" and cuda.libraries == [("/x/libcudart.so.12", "--lib")]
    with pytest.raises(ConfigError, match=r"^Unknown probe family 'gpu': valid ones are cuda, "):
        families(["cuda", "gpu"])
