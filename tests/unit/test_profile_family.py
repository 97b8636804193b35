"""The profile family's pure parts: which CPUs get a perf event, the sample period, the op it records."""

from __future__ import annotations

from whyprobe.events import Source, op_by_name
from whyprobe.probes.profile import ProfileFamily, online_cpus


def test_online_cpu_lists_expand_ranges_and_singles():
    assert online_cpus("0-3,6,8-9\n") == [0, 1, 2, 3, 6, 8, 9]
    assert online_cpus("0") == [0]


def test_99_hz_is_a_period_of_10_1_ms_and_samples_are_host_cpu_sample():
    assert ProfileFamily().period_ns == 10_101_010
    info = op_by_name("cpu_sample")
    assert (info.source, info.op) == (Source.HOST, 16)
