"""The CUDA symbol table: cookies agree with bpf/cuda.h and the op registry, the real runtime
defines every runtime symbol, the stand-in defines all of them with a push %rbp prologue,
and libraries are found the way the child's dynamic linker would find them."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from whyprobe.demo.build import build_workloads
from whyprobe.kernel.elfsym import function_offsets
from whyprobe.probes import libs
from whyprobe.probes.cuda import ALL_SYMBOLS, DRIVER_SYMBOLS, RUNTIME_SYMBOLS, Layout, plan_library
from whyprobe.events import OPS, Source, op_by_name

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "src/whyprobe/bpf/cuda.h"
REAL_CUDART = ROOT / ".venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12"


def test_layout_enum_matches_the_bpf_header():
    values = {m.group(1): int(m.group(2)) for m in re.finditer(r"\bCL_(\w+) = (\d+),", HEADER.read_text())}
    assert values == {m.name: m.value for m in Layout}


def test_cookies_encode_op_source_variant_and_layout():
    launch = ALL_SYMBOLS["cudaLaunchKernel_ptsz"]
    assert launch.cookie == 3 | 1 << 16 | 1 << 24 | Layout.LAUNCH << 32
    dtoh = ALL_SYMBOLS["cuMemcpyDtoHAsync_v2_ptsz"]
    assert dtoh.cookie == op_by_name("cuMemcpyAsync").op | Source.DRIVER << 16 | 1 << 24 | Layout.CU_MEMCPY_ASYNC << 32 | 2 << 40
    for s in ALL_SYMBOLS.values():
        info = op_by_name(s.op)
        assert (info.source, info.op) == (s.source, s.cookie & 0xFFFF)
        assert s.ptsz == s.name.endswith(("_ptsz", "_ptds"))


def test_symbol_set_is_what_the_design_lists():
    assert "__cudaLaunchKernel" not in ALL_SYMBOLS  # it tail-calls cudaLaunchKernel: probing both counts twice
    assert len(RUNTIME_SYMBOLS) == 40 and len(DRIVER_SYMBOLS) == 32  # + the kernel-name lookups: 2 runtime, 3 driver
    assert {s.op for s in RUNTIME_SYMBOLS} == {o.name for o in OPS if o.source == Source.CUDA}
    assert {s.op for s in DRIVER_SYMBOLS} == {o.name for o in OPS if o.source == Source.DRIVER}


def test_real_runtime_defines_every_runtime_symbol():
    plan = plan_library(str(REAL_CUDART))
    assert plan.missing == []
    assert sorted(plan.found) == sorted(s.name for s in RUNTIME_SYMBOLS)
    assert plan.kinds == ["runtime"]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds the stand-in")
def test_standin_defines_everything_and_starts_with_push_rbp():
    w = build_workloads()
    for path, table in ((w.cudart, RUNTIME_SYMBOLS), (w.cuda, DRIVER_SYMBOLS)):
        plan = plan_library(str(path))
        assert plan.missing == [], path
        data = path.read_bytes()
        offsets = function_offsets(path)
        # 0x55 = push %rbp: the kernel emulates it, so uprobes cost ~1 µs instead of a single-step trap
        assert {s.name: data[offsets[s.name]] for s in table} == {s.name: 0x55 for s in table}
        assert data[offsets["__cudaLaunchKernel" if table is RUNTIME_SYMBOLS else "cuLaunchKernel"]] == 0x55


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc builds the stand-in")
def test_command_resolution_follows_ld_library_path_first():
    w = build_workloads()
    hits, searched = libs.resolve_for_command([str(w.driver)], {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": f"/nonexistent:{w.lib_dir}"})
    assert hits[0].via == "LD_LIBRARY_PATH"
    assert {h.path for h in hits if h.via == "LD_LIBRARY_PATH"} == {str(w.cudart.resolve()), str(w.cuda.resolve())}
    assert searched[:2] == ["/nonexistent", str(w.lib_dir)]


def test_command_resolution_finds_the_wheel_of_the_python_it_runs():
    hits, _ = libs.resolve_for_command([sys.executable, "train.py"], {"PATH": "/usr/bin"})
    assert libs.LibraryHit(str(REAL_CUDART.resolve()), f"pip wheel of {sys.executable}") in hits


def test_cuda_library_names():
    for name in ("libcudart.so.12", "libcudart.so.13", "libcudart.so.12.9.79", "libcuda.so.1", "libcuda.so"):
        assert libs.is_cuda_library(f"/x/{name}")
    for name in ("libcudart_static.a", "libcudadevrt.a", "libcudnn.so.9", "libcuda.so.1.bak"):
        assert not libs.is_cuda_library(f"/x/{name}")
