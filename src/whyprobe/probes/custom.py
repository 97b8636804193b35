"""User-configured probes: the config's `probes.uprobes` and `probes.tracepoints` (source CUSTOM).

Ops: uprobe i of the config is op i, tracepoint i is op 1000 + i; `finish()`
names them in the `ops` table (`libfoo.so:my_func`, `sched:sched_switch`).

Uprobes (bpf/custom.bpf.c): one uprobe_multi link per library per direction,
the cookie carrying op and mode. `entry` records each call at entry (duration
0, arg0..arg2 = the first three integer argument registers, raw 64 bits);
`return` records it at return (ret = rax, raw); `both` records one event per
call with the entry time, duration, arguments and return value. For `both`,
entry state lives per (thread, probe) as a stack of CUSTOM_DEPTH frames, so
recursive calls are recorded one by one up to that nesting depth.

Tracepoints: one program attached once per distinct tracepoint (the kernel
refuses one program twice on a tracepoint); entries naming the same one take
consecutive slots of the `tp_specs` map, and the attach cookie says which.
Each filter is compiled here against the tracepoint's format file into
(offset, size, kind, comparison, value) terms and evaluated in the kernel;
a string field (`char rwbs[8]`, `__data_loc char[] filename`) compared with
`~ 'PATTERN'`, `!~`, `==` or `!=` a quoted text becomes a DFA in the
`tp_patterns` map (strmatch.py says how patterns read); arg0..arg2 are the first three numeric fields that are neither common_*
nor __syscall_nr (which the op already says).

Both kinds record only traced processes (the shared pid filter), unless the
trace is --all: a tracepoint fires for every process, and without the filter
a per-command trace would fill with everyone else's events.

Every problem is a one-line ConfigError naming the config entry, raised
before this family attaches anything: most in the constructor, a library
named by soname that only a target's maps reveal at attach time.
"""

from __future__ import annotations

import ctypes as ct
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from whyprobe.config import TracepointSpec, UprobeSpec
from whyprobe.errors import ConfigError, WhyprobeError
from whyprobe.kernel.elfsym import resolve
from whyprobe.kernel.libbpf import map_update
from whyprobe.probes import libs
from whyprobe.probes.base import TargetSpec
from whyprobe.events import Source
from whyprobe.strmatch import MAX_CLASSES, MAX_STATES, Dfa, PatternError, compile_pattern, literal_pattern

TRACEPOINT_OP_BASE = 1000
# Mirrors of bpf/custom.bpf.c.
EMIT_AT_ENTRY = 1 << 16
PAIRED = 1 << 17
MAX_OR = 4
MAX_AND = 4
NARGS = 3
MAX_SAME = 8  # config entries on one tracepoint
CMP = {"==": 1, "!=": 2, "<": 3, "<=": 4, ">": 5, ">=": 6, "&": 7, "~": 8, "!~": 9}
# enum field_kind
FIELD_UNSIGNED, FIELD_SIGNED, FIELD_CHARS, FIELD_DATA_LOC = 0, 1, 2, 3
_NOT_ARGS = {"__syscall_nr"}


class _Field(ct.Structure):
    _fields_ = [("offset", ct.c_uint16), ("size", ct.c_uint8), ("kind", ct.c_uint8)]


class _Cond(ct.Structure):
    _fields_ = [("field", _Field), ("cmp", ct.c_uint32), ("value", ct.c_uint64)]


class TpPatternStruct(ct.Structure):
    """struct tp_pattern: one compiled string pattern (strmatch.Dfa)."""

    _fields_ = [
        ("classes", ct.c_uint8 * 256),
        ("next", ct.c_uint8 * (MAX_STATES * MAX_CLASSES)),
        ("accept", ct.c_uint32),
        ("start", ct.c_uint32),
    ]

    @classmethod
    def of(cls, dfa: Dfa) -> "TpPatternStruct":
        out = cls(accept=dfa.accept, start=dfa.start)
        ct.memmove(out.classes, dfa.classes, 256)
        ct.memmove(out.next, dfa.next, len(dfa.next))
        return out


class TpSpecStruct(ct.Structure):
    """struct tp_spec: one tracepoint's op, compiled filter and argument fields."""

    _fields_ = [
        ("op", ct.c_uint32),
        ("n_or", ct.c_uint32),
        ("n_and", ct.c_uint32 * MAX_OR),
        ("cond", (_Cond * MAX_AND) * MAX_OR),
        ("args", _Field * NARGS),
    ]


@dataclass(frozen=True)
class TpField:
    name: str
    decl: str  # the C declaration as the format file gives it
    offset: int
    size: int
    signed: bool

    @property
    def numeric(self) -> bool:
        return self.size in (1, 2, 4, 8) and "[" not in self.decl and not self.decl.startswith(("__data_loc", "__rel_loc"))

    @property
    def string(self) -> bool:
        """A char array in the record, or a __data_loc string: what `~` and string == read."""
        return self.decl.startswith("__data_loc char[]") or (self.decl.startswith(("char ", "const char ", "unsigned char ")) and "[" in self.decl)

    @property
    def common(self) -> bool:
        return self.name.startswith("common_")


_FIELD_RE = re.compile(r"^\s*field:(?P<decl>[^;]+);\s*offset:(?P<offset>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d+);")
_NAME_RE = re.compile(r"(\w+)\s*(\[[^\]]*\])?\s*$")


def parse_format(text: str) -> list[TpField]:
    """The fields of a tracepoint format file (`/sys/kernel/tracing/events/CAT/EVENT/format`)."""
    out = []
    for line in text.splitlines():
        m = _FIELD_RE.match(line)
        if not m:
            continue
        decl = m["decl"].strip()
        name = _NAME_RE.search(decl)
        if name:
            out.append(TpField(name.group(1), decl, int(m["offset"]), int(m["size"]), m["signed"] == "1"))
    return out


def arg_fields(fields: Sequence[TpField]) -> list[TpField]:
    """The fields recorded as arg0..arg2: the first three numeric ones, not common_* nor __syscall_nr."""
    return [f for f in fields if f.numeric and not f.common and f.name not in _NOT_ARGS][:NARGS]


def _pack_field(f: TpField) -> _Field:
    if f.string:
        kind = FIELD_DATA_LOC if f.decl.startswith("__data_loc") else FIELD_CHARS
        return _Field(f.offset, min(f.size, 255), kind)
    return _Field(f.offset, f.size, FIELD_SIGNED if f.signed else FIELD_UNSIGNED)


def compile_tracepoint(key: str, spec: TracepointSpec, fields: Sequence[TpField], op: int, patterns: list[Dfa] | None = None) -> TpSpecStruct:
    """The filter and argument layout of one tracepoint as the kernel program reads them.

    `key` names the config entry in errors (probes.tracepoints[0]). String
    conditions append their DFA to `patterns` (the `tp_patterns` map) and refer to it by index.
    """
    patterns = [] if patterns is None else patterns
    by_name = {f.name: f for f in fields}
    groups = spec.conditions()
    if len(groups) > MAX_OR:
        raise ConfigError(f"{key}.filter: at most {MAX_OR} alternatives joined with || are supported, got {len(groups)}")
    out = TpSpecStruct(op=op, n_or=len(groups))
    for i, group in enumerate(groups):
        if len(group) > MAX_AND:
            raise ConfigError(f"{key}.filter: at most {MAX_AND} conditions joined with && are supported, got {len(group)}")
        out.n_and[i] = len(group)
        for j, (name, cmp, value) in enumerate(group):
            f = by_name.get(name)
            if f is None:
                known = ", ".join(x.name for x in fields if x.numeric or x.string)
                raise ConfigError(f"{key}.filter: {spec.name} has no field {name!r} (fields: {known})")
            if f.string:
                out.cond[i][j] = _string_cond(key, spec, f, cmp, value, patterns)
                continue
            if not f.numeric:
                raise ConfigError(f"{key}.filter: field {name!r} of {spec.name} is {f.decl!r}, neither a number nor a string; it cannot be filtered")
            if isinstance(value, str):
                raise ConfigError(f"{key}.filter: field {name!r} is numeric; compare it with a number, not {value!r}")
            if not -(1 << 63) <= value < 1 << 64:
                raise ConfigError(f"{key}.filter: value {value} of {name!r} does not fit in 64 bits")
            out.cond[i][j] = _Cond(_pack_field(f), CMP[cmp], value & ((1 << 64) - 1))
    for k, f in enumerate(arg_fields(fields)):
        out.args[k] = _pack_field(f)
    return out


def _string_cond(key: str, spec: TracepointSpec, f: TpField, cmp: str, value: int | str, patterns: list[Dfa]) -> _Cond:
    """A string condition: `~`/`!~` a pattern, `==`/`!=` a literal, as a DFA the kernel runs."""
    if not isinstance(value, str) or cmp not in ("==", "!=", "~", "!~"):
        raise ConfigError(
            f"{key}.filter: field {f.name!r} of {spec.name} is {f.decl!r}, a string; compare it with ~ 'PATTERN', !~, == \"text\" or !="
        )
    try:
        dfa = compile_pattern(value if cmp in ("~", "!~") else literal_pattern(value))
    except PatternError as exc:
        raise ConfigError(f"{key}.filter: {f.name} {cmp} {value!r}: {exc}") from None
    patterns.append(dfa)
    return _Cond(_pack_field(f), CMP["~" if cmp in ("~", "==") else "!~"], len(patterns) - 1)


def _name_matches(filename: str, name: str) -> bool:
    """libfoo.so matches libfoo.so and libfoo.so.2, libfoo matches libfoo.so.2 (shared objects only)."""
    if filename == name:
        return True
    return filename.startswith(name + ".") and (name.endswith(".so") or ".so" in filename[len(name) :])


def find_library(name: str, pids: Sequence[int] = ()) -> tuple[str | None, list[str]]:
    """(real path or None, places searched) for a library given as a path or a (so)name.

    A name is looked up where the running targets have it mapped first (the copy
    they really use), then as their dynamic linker would: LD_LIBRARY_PATH, the
    ldconfig cache, the default directories.
    """
    if "/" in name:
        return (os.path.realpath(name) if os.path.isfile(name) else None), [name]
    searched: list[str] = []
    for pid in pids:
        searched.append(f"/proc/{pid}/maps")
        for path in libs.mapped_files(pid):
            if _name_matches(os.path.basename(path), name) and os.path.isfile(path):
                return os.path.realpath(path), searched
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    searched += dirs
    for d in dirs:
        if hit := _in_dir(d, name):
            return hit, searched
    searched.append("ldconfig -p")
    cached = libs.ldconfig_cache()
    for exact in (True, False):
        for soname, path in cached:
            if (soname == name if exact else _name_matches(soname, name)) and os.path.isfile(path):
                return os.path.realpath(path), searched
    searched += libs.DEFAULT_DIRS
    for d in libs.DEFAULT_DIRS:
        if hit := _in_dir(d, name):
            return hit, searched
    return None, searched


def _in_dir(d: str, name: str) -> str | None:
    """Real path of `name` in directory `d`, else of its lowest-sorting versioned file (libfoo.so.2)."""
    try:
        hits = sorted((n for n in os.listdir(d) if _name_matches(n, name)), key=lambda n: (n != name, n))
    except OSError:
        return None
    for n in hits:
        if os.path.isfile(os.path.join(d, n)):
            return os.path.realpath(os.path.join(d, n))
    return None


@dataclass
class PlannedUprobe:
    index: int
    spec: UprobeSpec
    path: str | None = None  # resolved real path; None until found
    offset: int = 0
    searched: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"probes.uprobes[{self.index}]"

    @property
    def op(self) -> int:
        return self.index

    @property
    def name(self) -> str:
        lib = self.spec.library if "/" not in self.spec.library else os.path.basename(self.spec.library)
        return f"{lib}:{self.spec.symbol}"

    @property
    def description(self) -> str:
        where = f"uprobe on {self.spec.symbol} in {self.path}"
        if self.spec.attach == "entry":
            return f"{where}, at entry: arg0..arg2 = first three integer arguments (raw registers)"
        if self.spec.attach == "return":
            return f"{where}, at return: ret = return value (rax, raw)"
        return f"{where}: ts = entry, duration = call time, arg0..arg2 = first three integer arguments (raw registers), ret = return value (rax, raw)"

    def locate(self, pids: Sequence[int]) -> bool:
        """Find the library and the symbol's offset; False if the library is not found (yet)."""
        path, searched = find_library(self.spec.library, pids)
        if path is None:
            if "/" in self.spec.library:
                raise ConfigError(f"{self.key}: library {self.spec.library} does not exist")
            self.searched = searched
            return False
        try:
            found, _ = resolve(path, [self.spec.symbol])
        except WhyprobeError as exc:
            raise ConfigError(f"{self.key}: {exc}") from None
        if not found:
            raise ConfigError(f"{self.key}: symbol {self.spec.symbol} not found in {path}")
        self.path, self.offset = path, found[self.spec.symbol]
        return True

    def not_found(self) -> ConfigError:
        return ConfigError(f"{self.key}: library {self.spec.library} not found (searched: {', '.join(self.searched)}); give its path")


@dataclass
class PlannedTracepoint:
    index: int
    spec: TracepointSpec
    fields: list[TpField] = field(default_factory=list)
    compiled: TpSpecStruct | None = None

    @property
    def key(self) -> str:
        return f"probes.tracepoints[{self.index}]"

    @property
    def op(self) -> int:
        return TRACEPOINT_OP_BASE + self.index

    @property
    def category_event(self) -> tuple[str, str]:
        category, _, event = self.spec.name.partition(":")
        return category, event

    @property
    def description(self) -> str:
        args = ", ".join(f"arg{k} = {f.name}" for k, f in enumerate(arg_fields(self.fields)))
        text = f"tracepoint {self.spec.name}"
        if self.spec.filter.strip():
            text += f" where {self.spec.filter.strip()}"
        return f"{text}: {args}" if args else text

    def prepare(self, tracefs: str, patterns: list[Dfa] | None = None) -> None:
        category, event = self.category_event
        fmt = Path(tracefs) / "events" / category / event / "format"
        try:
            text = fmt.read_text()
        except FileNotFoundError:
            raise ConfigError(f"{self.key}: no tracepoint {self.spec.name} on this kernel ({fmt} does not exist)") from None
        except OSError as exc:
            raise ConfigError(f"{self.key}: cannot read {fmt}: {exc.strerror}") from None
        self.fields = parse_format(text)
        self.compiled = compile_tracepoint(self.key, self.spec, self.fields, self.op, patterns)


def tracepoint_slots(tracepoints: Sequence[PlannedTracepoint]) -> list[list[PlannedTracepoint]]:
    """Entries grouped by tracepoint, in order of first appearance: one attachment per group."""
    groups: dict[str, list[PlannedTracepoint]] = {}
    for t in tracepoints:
        groups.setdefault(t.spec.name, []).append(t)
    for name, group in groups.items():
        if len(group) > MAX_SAME:
            raise ConfigError(f"probes.tracepoints: at most {MAX_SAME} entries may name {name}, got {len(group)}")
    return list(groups.values())


class CustomFamily:
    """ProbeFamily for the config's own uprobes and tracepoints."""

    name = "custom"

    def __init__(self, uprobes: Sequence[UprobeSpec] = (), tracepoints: Sequence[TracepointSpec] = ()) -> None:
        for key, entries in (("uprobes", uprobes), ("tracepoints", tracepoints)):
            if len(entries) > TRACEPOINT_OP_BASE:
                raise ConfigError(f"probes.{key}: at most {TRACEPOINT_OP_BASE} entries are supported, got {len(entries)}")
        self.uprobes = [PlannedUprobe(i, s) for i, s in enumerate(uprobes)]
        self.tracepoints = [PlannedTracepoint(i, s) for i, s in enumerate(tracepoints)]
        self.slots = tracepoint_slots(self.tracepoints)
        self.patterns: list[Dfa] = []
        # Everything that can be checked without the targets fails here, before a command is launched.
        for u in self.uprobes:
            u.locate(())
        if self.tracepoints:
            from whyprobe.kernel.tracefs import ensure_tracefs

            try:
                tracefs = ensure_tracefs()
            except OSError as exc:
                raise ConfigError(f"probes.tracepoints: {exc.strerror}") from None
            for t in self.tracepoints:
                t.prepare(tracefs, self.patterns)
        self._ops_written = False

    def attach(self, probes, targets: TargetSpec) -> list[str]:
        for u in self.uprobes:
            if u.path is None and not u.locate(targets.pids):
                raise u.not_found()
        if not self.uprobes and not self.tracepoints:
            return ["custom: the config has no probes.uprobes or probes.tracepoints; nothing attached"]
        obj = probes.open("custom")
        obj.resize_map("tp_specs", max(1, len(self.tracepoints)))
        obj.resize_map("tp_patterns", max(1, len(self.patterns)))
        obj.set_autoload("handle_custom_entry", any(u.spec.attach != "return" for u in self.uprobes))
        obj.set_autoload("handle_custom_return", any(u.spec.attach != "entry" for u in self.uprobes))
        obj.set_autoload("handle_custom_tp", bool(self.tracepoints))
        obj.load()
        patterns_fd = obj.map_fd("tp_patterns")
        for i, dfa in enumerate(self.patterns):
            map_update(patterns_fd, i.to_bytes(4, "little"), bytes(TpPatternStruct.of(dfa)))
        specs_fd = obj.map_fd("tp_specs")
        for slot, t in enumerate(t for group in self.slots for t in group):
            map_update(specs_fd, slot.to_bytes(4, "little"), bytes(t.compiled))
        entry: dict[str, list[tuple[int, int]]] = defaultdict(list)
        ret: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for u in self.uprobes:
            if u.spec.attach == "entry":
                entry[u.path].append((u.offset, u.op | EMIT_AT_ENTRY))
            elif u.spec.attach == "return":
                ret[u.path].append((u.offset, u.op))
            else:
                entry[u.path].append((u.offset, u.op | PAIRED))
                ret[u.path].append((u.offset, u.op | PAIRED))
        for prog, table, retprobe in (("handle_custom_entry", entry, False), ("handle_custom_return", ret, True)):
            for path, sites in table.items():
                obj.attach_uprobe_multi(prog, path, [o for o, _ in sites], [c for _, c in sites], retprobe=retprobe)
        first = 0
        for group in self.slots:
            category, event = group[0].category_event
            obj.attach_tracepoint("handle_custom_tp", category, event, cookie=first | len(group) << 16)
            first += len(group)
        return []

    def ops_rows(self) -> list[tuple[int, int, str, str]]:
        """(source_id, op_id, name, description) of every configured probe."""
        rows = [(int(Source.CUSTOM), u.op, u.name, u.description) for u in self.uprobes]
        rows += [(int(Source.CUSTOM), t.op, t.spec.name, t.description) for t in self.tracepoints]
        return rows

    def flags(self) -> dict:
        """What the session stores in sessions.flags: where each uprobe was attached."""
        if not self.uprobes:
            return {}
        return {"custom_uprobes": [{"op": u.op, "path": u.path, "symbol": u.spec.symbol, "offset": u.offset, "attach": u.spec.attach} for u in self.uprobes]}

    def on_batch(self, records: np.ndarray) -> None:
        return None

    def checkpoint(self, writer) -> None:
        """Name the ops early, so a trace killed before finish() still has them."""
        if not self._ops_written:
            self.finish(None, writer)

    def finish(self, probes, writer) -> None:
        rows = self.ops_rows()
        if rows:
            writer.put_rows("ops", ("source_id", "op_id", "name", "description"), rows, replace=True)
        self._ops_written = True
