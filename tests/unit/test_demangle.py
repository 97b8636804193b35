"""Frames are demangled by cxxfilt wherever they are shown: stacks, folded output, MCP, explain."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import cxxfilt

sys.path.insert(0, str(Path(__file__).parent))
from test_mcp_tools import call  # noqa: E402

from whyprobe.analyze.stacks import folded, parse_frames
from whyprobe.commands import main
from whyprobe.demangle import demangle
from whyprobe.store.reader import open_trace

COPY_KERNEL = "at::native::copy_kernel_cuda(at::TensorIterator&, bool)"


def test_demangle_keeps_offsets_clones_and_plain_names() -> None:
    assert demangle("_ZN2at6nativeL16copy_kernel_cudaERNS_14TensorIteratorEb+0x618") == COPY_KERNEL + "+0x618"
    assert demangle("_ZN2at6nativeL9copy_implERNS_6TensorERKS1_b.isra.0") == (
        "at::native::copy_impl(at::Tensor&, at::Tensor const&, bool) [clone .isra.0]"
    )
    # Same answer as the library itself, not a hand-written approximation.
    name = "_ZN4demo6launchIfLi4EEEvPT_i"
    assert demangle(name) == cxxfilt.demangle(name) == "void demo::launch<float, 4>(float*, int)"
    assert demangle("cudaLaunchKernel") == "cudaLaunchKernel"
    assert demangle("_Znot_a_name") == "_Znot_a_name"


def test_python_frames_are_left_alone() -> None:
    raw = json.dumps([{"s": "_Z3fooi", "f": "x.py", "l": 3, "py": True}, {"s": "_Z3fooi", "f": "libx.so"}])
    frames = parse_frames(raw)
    assert [f["s"] for f in frames] == ["_Z3fooi", "foo(int)"]


def _mangled_count(text: str) -> int:
    return text.count('"_Z') + text.count(" _Z") + text.count(";_Z")


def test_ingero_capture_shows_no_mangled_frame(shared_data: Path, tmp_path: Path, capsys) -> None:
    # GIVEN a real Ingero capture whose stack_traces hold 19 stacks with mangled C++ frames
    src = shared_data / "pytorch-dataloader-starvation.db"
    conn = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    assert conn.execute("SELECT COUNT(*) FROM stack_traces WHERE frames LIKE '%\"_Z%'").fetchone()[0] == 19
    conn.close()
    # WHEN stacks, folded output and the MCP tool show them
    assert main(["stacks", str(src), "--json", "--limit", "100"]) == 0
    out = capsys.readouterr().out
    with open_trace(src) as t:
        fold = folded(t)
    res = call(src, "get_stacks", {"limit": 100, "max_frames": 64})
    mcp = json.dumps(res.structured_content)
    # THEN every frame is demangled, offsets kept
    for text, label in ((out, COPY_KERNEL), (mcp, COPY_KERNEL), (fold, COPY_KERNEL.replace(" ", "_"))):
        assert _mangled_count(text) == 0
        assert label + "+0x618" in text
