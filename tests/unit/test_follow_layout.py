"""record/follow.py mirrors bpf/follow.h: notice and held layouts against BTF, the libnames packing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from whyprobe.record.follow import LIBNAME_LEN, LIBNAMES, NOTICE_DTYPE, pack_libnames
from whyprobe.record.watchdog import HELD

OBJ = Path(__file__).resolve().parents[2] / "src/whyprobe/bpf/follow.bpf.o"


def _struct(name: str) -> dict:
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(OBJ)], check=True, capture_output=True, text=True)
    return next(t for t in json.loads(out.stdout)["types"] if t.get("kind") == "STRUCT" and t.get("name") == name)


def test_notice_dtype_matches_btf() -> None:
    t = _struct("wp_notice")
    assert t["size"] == NOTICE_DTYPE.itemsize
    assert [(m["name"], m["bits_offset"] // 8) for m in t["members"]] == [(n, NOTICE_DTYPE.fields[n][1]) for n in NOTICE_DTYPE.names]


def test_held_struct_matches_btf() -> None:
    t = _struct("wp_held")
    assert t["size"] == HELD.size
    assert [(m["name"], m["bits_offset"] // 8) for m in t["members"]] == [("ts_ns", 0), ("pid", 8), ("fd", 12)]


def test_libnames_are_packed_as_len_and_padded_name() -> None:
    packed = pack_libnames(["libcudart.so", "libcuda.so", "libcudart.so", ""])
    # duplicates and empty names go; each entry is a u32 length and the name padded to LIBNAME_LEN
    assert len(packed) == 2 * (4 + LIBNAME_LEN)
    assert packed[:4] == (12).to_bytes(4, "little") and packed[4:16] == b"libcudart.so" and packed[16:32] == bytes(16)
    assert packed[32:36] == (10).to_bytes(4, "little") and packed[36:46] == b"libcuda.so"


def test_long_names_are_cut_to_a_prefix_and_extra_names_left_out() -> None:
    long = "lib" + "x" * 40 + ".so"
    packed = pack_libnames([long])
    assert packed[:4] == LIBNAME_LEN.to_bytes(4, "little") and packed[4:] == long.encode()[:LIBNAME_LEN]
    assert len(pack_libnames([f"lib{i}.so" for i in range(LIBNAMES + 3)])) == LIBNAMES * (4 + LIBNAME_LEN)
