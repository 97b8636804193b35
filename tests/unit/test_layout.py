"""The numpy dtypes must match the C records byte for byte, as the compiled objects' BTF says."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from whyprobe.events import EVENT_DTYPE, OPS, PAYLOAD_DTYPE, PayloadKind, Source

BPF_DIR = Path(__file__).resolve().parents[2] / "src/whyprobe/bpf"


def _btf_structs(obj: Path) -> dict[str, dict]:
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(obj)], check=True, capture_output=True, text=True)
    return {t["name"]: t for t in json.loads(out.stdout)["types"] if t.get("kind") == "STRUCT" and t.get("name")}


def _objects() -> list[Path]:
    """Every compiled object whose source shares the record layout (includes common.bpf.h)."""
    objs = [o for o in sorted(BPF_DIR.glob("*.bpf.o")) if '"common.bpf.h"' in o.with_suffix("").with_suffix(".bpf.c").read_text()]
    if not objs or shutil.which("bpftool") is None:
        pytest.fail("BPF objects or bpftool missing: run `make bpf` (make test does)")
    return objs


@pytest.mark.parametrize("struct, dtype", [("wp_event", EVENT_DTYPE), ("wp_payload", PAYLOAD_DTYPE)])
def test_dtype_matches_btf_of_every_object(struct: str, dtype) -> None:
    # GIVEN every compiled object WHEN reading the struct from its BTF THEN size, names and offsets match
    expected = [(name, dtype.fields[name][1]) for name in dtype.names]
    for obj in _objects():
        t = _btf_structs(obj).get(struct)
        assert t is not None, f"{obj.name} has no {struct} in its BTF"
        assert t["size"] == dtype.itemsize, obj.name
        assert [(m["name"], m["bits_offset"] // 8) for m in t["members"]] == expected, obj.name


def _c_enum(name: str) -> dict[str, int]:
    text = (BPF_DIR / "whyprobe.h").read_text()
    body = re.search(r"enum %s \{(.*?)\};" % name, text, re.S).group(1)
    return {k: int(v) for k, v in re.findall(r"(\w+)\s*=\s*(\d+)", body)}


def test_sources_and_payload_kinds_match_header() -> None:
    assert {k.removeprefix("WP_SRC_"): v for k, v in _c_enum("wp_source").items()} == {s.name: s.value for s in Source}
    assert {k.removeprefix("WP_PL_"): v for k, v in _c_enum("wp_payload_kind").items()} == {
        k.name: k.value for k in PayloadKind
    }


def test_op_registry_has_unique_ids_and_names() -> None:
    keys = [(o.source, o.op) for o in OPS]
    names = [o.name for o in OPS]
    assert len(keys) == len(set(keys))
    assert len(names) == len(set(names))
