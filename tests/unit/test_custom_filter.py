"""Custom probes without a kernel: tracepoint format parsing, filter compilation into the struct
the BPF program reads (checked against the object's BTF), library lookup, op names."""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from whyprobe.config import TracepointSpec, UprobeSpec
from whyprobe.errors import ConfigError
from whyprobe.probes import custom, families
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.custom import (
    CMP,
    CustomFamily,
    PlannedTracepoint,
    TpSpecStruct,
    arg_fields,
    compile_tracepoint,
    find_library,
    parse_format,
    tracepoint_slots,
)
from whyprobe.strmatch import MAX_BYTES, MAX_CLASSES, MAX_STATES

BPF_DIR = Path(__file__).resolve().parents[2] / "src/whyprobe/bpf"

READ_FORMAT = """name: sys_enter_read
ID: 842
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:char * buf;\toffset:24;\tsize:8;\tsigned:0;
\tfield:size_t count;\toffset:32;\tsize:8;\tsigned:0;

print fmt: "fd: 0x%08lx, buf: 0x%08lx, count: 0x%08lx", ((unsigned long)(REC->fd)), ((unsigned long)(REC->buf)), ((unsigned long)(REC->count))
"""

SWITCH_FORMAT = """name: sched_switch
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prev_prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:char next_comm[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;
"""

BLOCK_FORMAT = """name: block_rq_issue
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:dev_t dev;\toffset:8;\tsize:4;\tsigned:0;
\tfield:sector_t sector;\toffset:16;\tsize:8;\tsigned:0;
\tfield:char rwbs[8];\toffset:24;\tsize:8;\tsigned:0;
"""

EXEC_FORMAT = """name: sched_process_exec
format:
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;
"""


def test_format_fields_with_offsets_sizes_and_signedness():
    fields = {f.name: f for f in parse_format(SWITCH_FORMAT)}
    assert (fields["prev_state"].offset, fields["prev_state"].size, fields["prev_state"].signed) == (32, 8, True)
    assert (fields["prev_comm"].decl, fields["prev_comm"].numeric) == ("char prev_comm[16]", False)
    assert fields["next_pid"].numeric and fields["common_pid"].common
    exec_fields = {f.name: f for f in parse_format(EXEC_FORMAT)}
    assert not exec_fields["filename"].numeric and exec_fields["old_pid"].offset == 16


@pytest.mark.parametrize(
    "text, names",
    [(READ_FORMAT, ["fd", "buf", "count"]), (SWITCH_FORMAT, ["prev_pid", "prev_prio", "prev_state"]), (EXEC_FORMAT, ["pid", "old_pid"])],
)
def test_recorded_args_are_the_first_numeric_fields_past_the_common_ones(text, names):
    assert [f.name for f in arg_fields(parse_format(text))] == names


def _compile(filter_text: str, fmt: str = READ_FORMAT, name: str = "syscalls:sys_enter_read") -> TpSpecStruct:
    return compile_tracepoint("probes.tracepoints[2]", TracepointSpec(name=name, filter=filter_text), parse_format(fmt), 1002)


def test_filter_compiles_to_or_of_and_terms_on_field_layouts():
    spec = _compile("fd == 3 && count >= 0x10 || __syscall_nr > -5")
    assert (spec.op, spec.n_or, list(spec.n_and)) == (1002, 2, [2, 1, 0, 0])
    fd, count = spec.cond[0][0], spec.cond[0][1]
    assert (fd.field.offset, fd.field.size, fd.field.kind, fd.cmp, fd.value) == (16, 8, 0, CMP["=="], 3)
    assert (count.field.offset, count.cmp, count.value) == (32, CMP[">="], 16)
    nr = spec.cond[1][0]
    # a negative value is stored two's complement; the field's signedness picks the comparison
    assert (nr.field.offset, nr.field.size, nr.field.kind, nr.cmp, nr.value) == (8, 4, 1, CMP[">"], 2**64 - 5)
    assert [(a.offset, a.size) for a in spec.args] == [(16, 8), (24, 8), (32, 8)]


def test_empty_filter_accepts_everything():
    spec = _compile("")
    assert spec.n_or == 0 and spec.args[0].offset == 16


@pytest.mark.parametrize(
    "filter_text, fmt, name, message",
    [
        ("nope == 1", READ_FORMAT, "syscalls:sys_enter_read",
         "probes.tracepoints[2].filter: syscalls:sys_enter_read has no field 'nope' (fields: common_type, common_flags, common_preempt_count, common_pid, __syscall_nr, fd, buf, count)"),
        ("prev_comm == 1", SWITCH_FORMAT, "sched:sched_switch",
         "probes.tracepoints[2].filter: field 'prev_comm' of sched:sched_switch is 'char prev_comm[16]', a string; compare it with ~ 'PATTERN', !~, == \"text\" or !="),
        ("filename & 1", EXEC_FORMAT, "sched:sched_process_exec",
         "probes.tracepoints[2].filter: field 'filename' of sched:sched_process_exec is '__data_loc char[] filename', a string; compare it with ~ 'PATTERN', !~, == \"text\" or !="),
        ("pid == 'x'", EXEC_FORMAT, "sched:sched_process_exec",
         "probes.tracepoints[2].filter: field 'pid' is numeric; compare it with a number, not 'x'"),
        ("fd == 1 || fd == 2 || fd == 3 || fd == 4 || fd == 5", READ_FORMAT, "syscalls:sys_enter_read",
         "probes.tracepoints[2].filter: at most 4 alternatives joined with || are supported, got 5"),
        ("fd == 1 && fd == 2 && fd == 3 && fd == 4 && fd == 5", READ_FORMAT, "syscalls:sys_enter_read",
         "probes.tracepoints[2].filter: at most 4 conditions joined with && are supported, got 5"),
    ],
)
def test_bad_filters_are_one_line_errors_naming_the_entry(filter_text, fmt, name, message):
    with pytest.raises(ConfigError) as exc:
        _compile(filter_text, fmt, name)
    assert str(exc.value) == message


def _btf_struct(name: str) -> dict:
    obj = BPF_DIR / "custom.bpf.o"
    if not obj.exists() or shutil.which("bpftool") is None:
        pytest.fail("custom.bpf.o or bpftool missing: run `make bpf` (make test does)")
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(obj)], check=True, capture_output=True, text=True)
    return next(t for t in json.loads(out.stdout)["types"] if t.get("kind") == "STRUCT" and t.get("name") == name)


def test_compiled_struct_matches_the_bpf_object():
    # GIVEN struct tp_spec as the compiled object's BTF describes it THEN the ctypes mirror has its size and offsets
    t = _btf_struct("tp_spec")
    assert t["size"] == ctypes.sizeof(TpSpecStruct) == 296
    assert [(m["name"], m["bits_offset"] // 8) for m in t["members"]] == [(n, getattr(TpSpecStruct, n).offset) for n, _ in TpSpecStruct._fields_]
    # AND the constants shared with custom.bpf.c agree
    src = (BPF_DIR / "custom.bpf.c").read_text()
    define = dict(re.findall(r"#define (CUSTOM_\w+) \(?([0-9x]+(?:ULL << \d+)?)", src))
    assert int(define["CUSTOM_MAX_OR"]) == custom.MAX_OR and int(define["CUSTOM_MAX_AND"]) == custom.MAX_AND
    assert int(define["CUSTOM_MAX_SAME"]) == custom.MAX_SAME and int(define["CUSTOM_NARGS"]) == custom.NARGS
    assert define["CUSTOM_EMIT_AT_ENTRY"] == "1ULL << 16" and custom.EMIT_AT_ENTRY == 1 << 16
    assert define["CUSTOM_PAIRED"] == "1ULL << 17" and custom.PAIRED == 1 << 17
    assert {k.removeprefix("CMP_"): int(v) for k, v in re.findall(r"(CMP_\w+) = (\d+)", src)} == {
        "EQ": CMP["=="], "NE": CMP["!="], "LT": CMP["<"], "LE": CMP["<="], "GT": CMP[">"], "GE": CMP[">="], "AND": CMP["&"],
        "MATCH": CMP["~"], "NOMATCH": CMP["!~"],
    }
    # AND struct tp_pattern (a compiled string pattern) has the ctypes mirror's layout
    p = _btf_struct("tp_pattern")
    assert p["size"] == ctypes.sizeof(custom.TpPatternStruct)
    assert [(m["name"], m["bits_offset"] // 8) for m in p["members"]] == [(n, getattr(custom.TpPatternStruct, n).offset) for n, _ in custom.TpPatternStruct._fields_]
    assert int(define["CUSTOM_DFA_STATES"]) == MAX_STATES and int(define["CUSTOM_DFA_CLASSES"]) == MAX_CLASSES and int(define["CUSTOM_STR_MAX"]) == MAX_BYTES


def test_entries_on_one_tracepoint_share_an_attachment():
    specs = ["sched:sched_switch", "syscalls:sys_enter_read", "sched:sched_switch"]
    planned = [PlannedTracepoint(i, TracepointSpec(name=n)) for i, n in enumerate(specs)]
    assert [[t.index for t in g] for g in tracepoint_slots(planned)] == [[0, 2], [1]]
    nine = [PlannedTracepoint(i, TracepointSpec(name="sched:sched_switch")) for i in range(9)]
    with pytest.raises(ConfigError, match=r"^probes\.tracepoints: at most 8 entries may name sched:sched_switch, got 9$"):
        tracepoint_slots(nine)


def test_library_lookup_by_path_search_path_and_unversioned_name(tmp_path, monkeypatch):
    lib = tmp_path / "libwpcustom.so.3"
    lib.write_bytes(b"\x7fELF")
    (tmp_path / "libwpcustom.so").symlink_to(lib.name)
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/nonexistent:{tmp_path}")
    assert find_library(str(tmp_path / "libwpcustom.so"))[0] == str(lib)
    assert find_library("libwpcustom.so.3")[0] == str(lib)
    assert find_library("libwpcustom.so") == (str(lib), ["/nonexistent", str(tmp_path)])
    assert find_library("libwpcustom")[0] == str(lib)
    path, searched = find_library("libwpcustom_absent.so")
    assert path is None and searched[:3] == ["/nonexistent", str(tmp_path), "ldconfig -p"]
    assert find_library(str(tmp_path / "nope.so")) == (None, [str(tmp_path / "nope.so")])


def test_uprobe_ops_are_named_by_library_and_symbol():
    # GIVEN libc named by soname (found through the ldconfig cache)
    fam = CustomFamily([UprobeSpec(library="libc.so.6", symbol="getpid", attach="return"), UprobeSpec(library="libc.so.6", symbol="getppid", attach="entry")])
    (op0, name0, desc0), (op1, name1, desc1) = [(r[1], r[2], r[3]) for r in fam.ops_rows()]
    assert fam.uprobes[0].path.endswith("/libc.so.6") and fam.uprobes[0].offset > 0
    assert (op0, name0, op1, name1) == (0, "libc.so.6:getpid", 1, "libc.so.6:getppid")
    assert desc0 == f"uprobe on getpid in {fam.uprobes[0].path}, at return: ret = return value (rax, raw)"
    assert desc1.endswith("at entry: arg0..arg2 = first three integer arguments (raw registers)")


def test_family_without_entries_attaches_nothing_and_says_so():
    (fam,) = families(["custom"])
    assert fam.attach(None, TargetSpec()) == ["custom: the config has no probes.uprobes or probes.tracepoints; nothing attached"]
    assert fam.ops_rows() == [] and fam.flags() == {}


def test_string_conditions_compile_to_patterns_the_kernel_runs():
    # GIVEN the seed's block filter and a literal compare on a __data_loc string
    patterns: list = []
    spec = compile_tracepoint("probes.tracepoints[0]", TracepointSpec(name="block:block_rq_issue", filter="rwbs ~ '.*W.*'"), parse_format(BLOCK_FORMAT), 1000, patterns)
    (cond,) = spec.cond[0][: spec.n_and[0]]
    # THEN the condition reads the 8-byte char array and points at pattern 0
    assert (cond.field.offset, cond.field.size, cond.field.kind, cond.cmp, cond.value) == (24, 8, custom.FIELD_CHARS, CMP["~"], 0)
    # AND that DFA accepts exactly what re.fullmatch accepts, reading up to the NUL
    for rwbs, want in ((b"W\0\0", True), (b"WS", True), (b"FWFSM", True), (b"RA", False), (b"R\0W", False), (b"", False), (b"N", False)):
        assert patterns[0].matches(rwbs) == want, rwbs
    exec_spec = compile_tracepoint("t", TracepointSpec(name="sched:sched_process_exec", filter='filename != "/bin/true"'), parse_format(EXEC_FORMAT), 1001, patterns)
    neg = exec_spec.cond[0][0]
    assert (neg.field.offset, neg.field.kind, neg.cmp, neg.value) == (8, custom.FIELD_DATA_LOC, CMP["!~"], 1)
    assert patterns[1].matches(b"/bin/true\0") and not patterns[1].matches(b"/bin/true2")


@pytest.mark.parametrize(
    "pattern, message",
    [
        ("^W", "anchors ^ and $ are not needed: ~ always matches the whole field"),
        ("(?<=R)W", "unsupported in a kernel filter pattern: lookbacks are not implemented"),
        ("(W", "not a valid pattern; expected a regular expression of literals, ., [classes], groups, | and * + ? {m,n} (matched in full)"),
        ("a{40}", "pattern too large for the kernel: 42 states (at most 32)"),
        ("[a][b][c][d][e][f][g][h][i][j][k][l][m][n][o][p]", "too many distinct characters for the kernel: 17 classes (at most 16)"),
    ],
)
def test_patterns_the_kernel_cannot_run_are_refused_at_config_check(pattern, message):
    from whyprobe.config import parse_config

    with pytest.raises(ConfigError) as exc:
        parse_config(f"probes:\n  tracepoints:\n  - name: block:block_rq_issue\n    filter: \"rwbs ~ '{pattern}'\"\n", "c.yaml")
    assert str(exc.value) == f"config error in c.yaml: probes.tracepoints[0].filter: pattern '{pattern}': {message}, got \"rwbs ~ '{pattern}'\""
