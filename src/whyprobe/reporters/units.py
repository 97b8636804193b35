"""Human units for nanoseconds, bytes and counts, shared by every reporter."""

from __future__ import annotations

_NS_UNITS = ((1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "µs"))
_BYTE_UNITS = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))


def fmt_ns(ns: int | float) -> str:
    """1234 → '1.23 µs', 25_799_899 → '25.8 ms', 999 → '999 ns' (3 significant digits)."""
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    for scale, unit in _NS_UNITS:
        if ns >= scale:
            return f"{sign}{_three_digits(ns / scale)} {unit}"
    return f"{sign}{int(ns)} ns"


def fmt_bytes(n: int | float) -> str:
    """1536 → '1.50 KiB', 100 → '100 B'."""
    for scale, unit in _BYTE_UNITS:
        if abs(n) >= scale:
            return f"{_three_digits(n / scale)} {unit}"
    return f"{int(n)} B"


def fmt_count(n: int) -> str:
    """12345 → '12,345'."""
    return f"{n:,}"


def _three_digits(x: float) -> str:
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"
