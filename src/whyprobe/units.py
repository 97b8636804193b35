"""Durations, sizes and addresses as people type them (`30s`, `250ms`, `1h30m`, `64MiB`,
`:9464`) and as every reporter, the live view and the MCP server print them (`1.23 µs`).

Every parser raises `UnitError` (a ValueError, so pydantic validators turn it
into a field error) whose message is the expected form, e.g. `expected a
duration like 30s, 250ms, 5m or 1h`. CLI callers wrap it in a CommandError.

Sizes: `KiB/MiB/GiB/TiB` are powers of 1024, `KB/MB/GB/TB` powers of 1000, and
a bare letter (`k`, `M`, `G`, `T`, as `dd`, `ulimit` and `--ring 64M` users
mean it) is a power of 1024.
"""

from __future__ import annotations

import re

__all__ = ["UnitError", "parse_duration_ns", "parse_size", "parse_hostport", "DURATION_FORM", "SIZE_FORM", "fmt_ns", "fmt_bytes", "fmt_count"]

DURATION_FORM = "a duration like 30s, 250ms, 5m or 1h"
SIZE_FORM = "a size like 64MiB, 1GB or 512k"

_DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "min": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 2**10,
    "kib": 2**10,
    "kb": 10**3,
    "m": 2**20,
    "mib": 2**20,
    "mb": 10**6,
    "g": 2**30,
    "gib": 2**30,
    "gb": 10**9,
    "t": 2**40,
    "tib": 2**40,
    "tb": 10**12,
}
_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART = re.compile(_NUMBER + r"\s*(ns|us|µs|ms|min|s|m|h|d)", re.IGNORECASE)
_SIZE = re.compile(r"^\s*" + _NUMBER + r"\s*([a-z]*)\s*$", re.IGNORECASE)


class UnitError(ValueError):
    """A value that does not read as the expected unit; the message is the expected form."""


def parse_duration_ns(value: str | int | float, *, bare_unit: str = "s") -> int:
    """'30s' → 30_000_000_000; '1h30m', '250ms', '1.5s'; a bare number is in `bare_unit`."""
    if isinstance(value, bool):
        raise UnitError(f"expected {DURATION_FORM}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise UnitError(f"expected {DURATION_FORM} (not negative)")
        return round(value * _DURATION_UNITS[bare_unit])
    text = str(value).strip()
    if re.fullmatch(_NUMBER, text):
        return parse_duration_ns(float(text), bare_unit=bare_unit)
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(text):
        if text[pos : match.start()].strip():
            break
        total += float(match.group(1)) * _DURATION_UNITS[_unit_key(match.group(2))]
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        raise UnitError(f"expected {DURATION_FORM}")
    return round(total)


def parse_size(value: str | int | float, *, bare_unit: str = "b") -> int:
    """'64MiB' → 67108864, '1GB' → 10**9, '512k' → 524288; a bare number is in `bare_unit`."""
    if isinstance(value, bool):
        raise UnitError(f"expected {SIZE_FORM}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise UnitError(f"expected {SIZE_FORM} (not negative)")
        return round(value * _SIZE_UNITS[bare_unit.lower()])
    match = _SIZE.match(str(value))
    unit = match.group(2).lower() if match else None
    if unit == "":
        unit = bare_unit.lower()
    if match is None or unit not in _SIZE_UNITS:
        raise UnitError(f"expected {SIZE_FORM}")
    return round(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_hostport(value: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """':9464' → ('127.0.0.1', 9464); 'host:port'; '[::1]:9464' → ('::1', 9464); a bare port too."""
    text = str(value).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 < int(port) < 65536 or ("[" in host or "]" in host):
        raise UnitError("expected an address like :9464, 127.0.0.1:9464 or [::1]:9464")
    return host or default_host, int(port)


def _unit_key(unit: str) -> str:
    return unit if unit == "µs" else unit.lower()


# ---- printing -------------------------------------------------------------------------

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
