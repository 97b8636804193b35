"""String patterns of tracepoint filters (`rwbs ~ '.*W.*'`), compiled to a DFA the kernel runs.

`field ~ 'PATTERN'` is true when the string field, read byte by byte up to its
first NUL (at most MAX_BYTES bytes), matches PATTERN in full, as Python's
`re.fullmatch` would on ASCII text. `!~` is its negation; `field == "text"`
on a string field is the pattern of that literal text. PATTERN is a regular
expression made of literal characters, `.` (any byte but newline),
classes `[...]`/`[^...]`, `\\d \\w \\s`, groups `(...)`, alternation `|` and
repetition `* + ? {m,n}`; anchors, backreferences and lookbehind are not
regular (or not needed: the match is always whole) and are refused.

interegular parses the pattern into a minimal DFA; here it becomes three
arrays the BPF program indexes (bpf/custom.bpf.c `struct tp_pattern`): a
byte → class table, a (state, class) → state table and an accepting-state
bitmask. So a pattern costs one table lookup per byte in the kernel, and it
must fit: at most MAX_STATES states and MAX_CLASSES byte classes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import interegular

__all__ = ["Dfa", "PatternError", "compile_pattern", "literal_pattern", "MAX_STATES", "MAX_CLASSES", "MAX_BYTES", "PATTERN_FORM"]

# Mirrors of bpf/custom.bpf.c.
MAX_STATES = 32
MAX_CLASSES = 16
MAX_BYTES = 64
PATTERN_FORM = "a regular expression of literals, ., [classes], groups, | and * + ? {m,n} (matched in full)"


class PatternError(ValueError):
    """A pattern that is not in the restricted language, or too large for the kernel tables."""


@dataclass(frozen=True)
class Dfa:
    classes: bytes  # 256 entries: byte -> class
    next: bytes  # MAX_STATES * MAX_CLASSES entries: state * MAX_CLASSES + class -> state
    accept: int  # bit s set: state s accepts
    start: int

    def matches(self, data: bytes) -> bool:
        """What the kernel computes, for tests: run the DFA up to the first NUL or MAX_BYTES."""
        state = self.start
        for b in data[:MAX_BYTES]:
            if b == 0:
                break
            state = self.next[state * MAX_CLASSES + self.classes[b]]
        return bool(self.accept >> state & 1)


def compile_pattern(pattern: str) -> Dfa:
    """The DFA of `pattern`; PatternError says why a pattern cannot run in the kernel."""
    try:
        fsm = interegular.parse_pattern(pattern).to_fsm().reduce()
    except interegular.Unsupported as exc:
        if str(exc).strip("'") in ("^", "$"):
            raise PatternError("anchors ^ and $ are not needed: ~ always matches the whole field") from None
        raise PatternError(f"unsupported in a kernel filter pattern: {exc}") from None
    except Exception as exc:  # interegular reports syntax errors with several exception types
        detail = f" ({exc})" if str(exc) else ""
        raise PatternError(f"not a valid pattern{detail}; expected {PATTERN_FORM}") from None
    symbols = sorted(set(fsm.alphabet.by_transition))
    if len(symbols) > MAX_CLASSES:
        raise PatternError(f"too many distinct characters for the kernel: {len(symbols)} classes (at most {MAX_CLASSES})")
    index = {state: i for i, state in enumerate(sorted(fsm.states, key=lambda s: (s != fsm.initial, s)))}
    dead = len(index)  # missing transitions lead to a rejecting state that never leaves
    if dead + 1 > MAX_STATES:
        raise PatternError(f"pattern too large for the kernel: {dead + 1} states (at most {MAX_STATES})")
    klass = {sym: i for i, sym in enumerate(symbols)}
    anything = klass.get(fsm.alphabet[interegular.fsm.anything_else])
    classes = bytearray(256)
    for b in range(256):
        sym = fsm.alphabet[chr(b)] if b < 128 else fsm.alphabet[interegular.fsm.anything_else]
        classes[b] = klass.get(sym, anything if anything is not None else 0)
    table = bytearray([dead]) * (MAX_STATES * MAX_CLASSES)
    for state, moves in fsm.map.items():
        for sym, target in moves.items():
            table[index[state] * MAX_CLASSES + klass[sym]] = index[target]
    accept = sum(1 << index[s] for s in fsm.finals)
    return Dfa(bytes(classes), bytes(table), accept, index[fsm.initial])


def literal_pattern(text: str) -> str:
    """A pattern matching exactly `text` (for `field == "text"`)."""
    return re.escape(text)
