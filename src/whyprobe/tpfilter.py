"""The filter grammar of config tracepoints: `prev_pid != 0 && next_pid != 0 || rwbs ~ '.*W.*'`.

An OR (`||`) of ANDs (`&&`) of `field OP value`. Numbers compare with
== != < <= > >= and & (any bit set); quoted strings with == and !=, patterns
(strmatch.py) with ~ and !~. Which fields exist, and what they hold, is the
tracepoint's business (probes/custom.py compiles against its format file).
"""

from __future__ import annotations

import re

from whyprobe.strmatch import PatternError, compile_pattern
from whyprobe.units import UnitError

__all__ = ["FILTER_FORM", "parse_filter"]

_CONDITION = re.compile(
    r"^\s*([A-Za-z_]\w*)\s*(==|!=|!~|<=|>=|<|>|&|~)\s*(-?\d+|0x[0-9a-fA-F]+|\"[^\"]*\"|'[^']*')\s*$"
)
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'")
FILTER_FORM = (
    'conditions like "pid == 123", "prev_state != 0" or "rwbs ~ \'.*W.*\'", joined with && or ||'
)


def _split(text: str, sep: str) -> list[str]:
    """`text` split on `sep` outside quoted strings (a pattern may contain || or &&)."""
    parts, start, pos = [], 0, 0
    while (at := text.find(sep, pos)) >= 0:
        quoted = next((m for m in _QUOTED.finditer(text, start) if m.start() < at < m.end()), None)
        if quoted is not None:
            pos = quoted.end()
            continue
        parts.append(text[start:at])
        start = pos = at + len(sep)
    return [*parts, text[start:]]


def parse_filter(text: str) -> list[list[tuple[str, str, int | str]]]:
    """'a == 1 && b != 0 || c ~ "x.*"' → OR of ANDs: [[(a, ==, 1), (b, !=, 0)], [(c, ~, "x.*")]].

    Patterns (`~`, `!~`) are checked here, so `config --check` refuses one the kernel cannot run.
    """
    if not text.strip():
        return []
    alternatives = []
    for alternative in _split(text, "||"):
        conjunction = []
        for condition in _split(alternative, "&&"):
            match = _CONDITION.match(condition)
            if match is None:
                raise UnitError(f"expected {FILTER_FORM}")
            field, op, raw = match.groups()
            value: int | str = raw[1:-1] if raw[0] in "\"'" else int(raw, 0)
            if op in ("~", "!~"):
                if not isinstance(value, str):
                    raise UnitError(f"{field} {op}: expected a quoted pattern, e.g. {field} {op} '.*W.*'")
                try:
                    compile_pattern(value)
                except PatternError as exc:
                    raise UnitError(f"pattern {raw}: {exc}") from None
            elif isinstance(value, str) and op not in ("==", "!="):
                raise UnitError(f"{field} {op}: a string compares only with ==, !=, ~ or !~")
            conjunction.append((field, op, value))
        alternatives.append(conjunction)
    return alternatives
