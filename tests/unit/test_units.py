"""Durations, sizes and addresses as people type them (units.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from whyprobe.units import UnitError, parse_duration_ns, parse_hostport, parse_size


@pytest.mark.parametrize(
    "text, ns",
    [
        ("30s", 30_000_000_000),
        ("5m", 300_000_000_000),
        ("5min", 300_000_000_000),
        ("1h", 3_600_000_000_000),
        ("250ms", 250_000_000),
        ("10us", 10_000),
        ("10µs", 10_000),
        ("100ns", 100),
        ("1.5s", 1_500_000_000),
        ("1h30m", 5_400_000_000_000),
        ("1h 30m", 5_400_000_000_000),
        ("2d", 172_800_000_000_000),
        (" 7S ", 7_000_000_000),
        ("0", 0),
        ("12", 12_000_000_000),
        (3, 3_000_000_000),
        (0.25, 250_000_000),
    ],
)
def test_durations(text, ns) -> None:
    assert parse_duration_ns(text) == ns


def test_bare_duration_uses_the_callers_unit() -> None:
    assert parse_duration_ns("2000", bare_unit="ms") == 2_000_000_000
    assert parse_duration_ns(24, bare_unit="h") == 86_400_000_000_000


@pytest.mark.parametrize("bad", ["", "s", "5x", "h5s", "5s garbage", "-3s", "1..2s", True, -1])
def test_bad_durations_say_the_expected_form(bad) -> None:
    with pytest.raises(UnitError, match=r"^expected a duration like 30s, 250ms, 5m or 1h"):
        parse_duration_ns(bad)


@pytest.mark.parametrize(
    "text, size",
    [
        ("64MiB", 64 * 2**20),
        ("64M", 64 * 2**20),
        ("1GB", 10**9),
        ("1GiB", 2**30),
        ("512k", 512 * 1024),
        ("512KB", 512_000),
        ("2tib", 2 * 2**40),
        ("4096", 4096),
        ("1.5KiB", 1536),
        ("10 B", 10),
        (4096, 4096),
    ],
)
def test_sizes(text, size) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "lots", "12 parsecs", "MiB", "-1k", False])
def test_bad_sizes_say_the_expected_form(bad) -> None:
    with pytest.raises(UnitError, match=r"^expected a size like 64MiB, 1GB or 512k"):
        parse_size(bad)


@pytest.mark.parametrize(
    "text, expected",
    [
        (":9464", ("127.0.0.1", 9464)),
        ("9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("localhost:8755", ("localhost", 8755)),
        ("[::1]:9464", ("::1", 9464)),
    ],
)
def test_hostport(text, expected) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("bad", ["", ":", "host:", "host:99999", ":0", "a:b", "[::1:9"])
def test_bad_hostport(bad) -> None:
    with pytest.raises(UnitError, match="expected an address like :9464"):
        parse_hostport(bad)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from([("ns", 1), ("us", 10**3), ("ms", 10**6), ("s", 10**9), ("m", 60 * 10**9), ("h", 3600 * 10**9)]))
def test_duration_integer_round_trip(n: int, unit: tuple[str, int]) -> None:
    assert parse_duration_ns(f"{n}{unit[0]}") == n * unit[1]


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from([("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("KB", 10**3), ("MB", 10**6)]))
def test_size_integer_round_trip(n: int, unit: tuple[str, int]) -> None:
    assert parse_size(f"{n}{unit[0]}") == n * unit[1]
