"""CUDA uprobes on the real libcudart (no driver: every call returns 35) and on the stand-in driver:
exact counts per op and per-thread-stream variant, return codes, and the arguments the ABI gives."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from cuda_helpers import REAL_CUDART, trace_workload
from whyprobe.demo.build import build_workloads
from whyprobe.kernel import caps
from whyprobe.probes.cuda import DRIVER_SYMBOLS, RUNTIME_SYMBOLS, CudaFamily, Layout
from whyprobe.events import F_PTSZ, Source, op_by_name

SIZE, KIND, STREAM, KERNEL_GRID = 12345, 2, 0x5000, 4 * 2 * 3
DEV = 0x7E0000000000  # the pointer the driver passes to frees, event and graph calls

# What each layout puts in (arg0, arg1, arg2) for the driver's fixed arguments; None = not checked.
EXPECTED = {
    Layout.NONE: (0, 0, 0),
    Layout.MALLOC: (SIZE, None, 0),
    Layout.MALLOC_ASYNC: (SIZE, None, STREAM),
    Layout.MALLOC_FLAGS: (SIZE, 1, 0),
    Layout.PTR: (DEV, 0, 0),
    Layout.PTR_STREAM: (DEV, 0, STREAM),
    Layout.LAUNCH: (None, KERNEL_GRID, STREAM),
    Layout.LAUNCH_CFG: (None, KERNEL_GRID, STREAM),
    Layout.MEMCPY: (SIZE, KIND, 0),
    Layout.MEMCPY_ASYNC: (SIZE, KIND, STREAM),
    Layout.MEMCPY2D: (SIZE * 2, KIND, 0),
    Layout.MEMCPY2D_ASYNC: (SIZE * 2, KIND, STREAM),
    Layout.MEMCPY_PEER: (SIZE, 0, 0),
    Layout.MEMCPY_PEER_ASYNC: (SIZE, 0, STREAM),
    Layout.MEMSET: (SIZE, 0x5A, 0),
    Layout.MEMSET_ASYNC: (SIZE, 0x5A, STREAM),
    Layout.STREAM: (0, 0, STREAM),
    Layout.STREAM_WAIT: (DEV, 0, STREAM),
    Layout.CU_LAUNCH: (None, KERNEL_GRID, STREAM),
    Layout.CU_MEMCPY: (SIZE, None, 0),
    Layout.CU_MEMCPY_ASYNC: (SIZE, None, STREAM),
    Layout.SIZE2: (SIZE, DEV, 0),
    Layout.GET_FUNC: (DEV, None, None),  # arg1 = the handle returned, arg2 = the name's address
    Layout.GET_FUNC_OF: (None, None, 0),
}


def _check(traced, symbols, counts, ret, other_rets=None):
    """other_rets: op name -> the return code those calls give instead of `ret`."""
    ev = traced.events()
    got = collections.Counter((int(e["source"]), int(e["op"]), bool(e["flags"] & F_PTSZ)) for e in ev)
    want = collections.Counter()
    for s in symbols:
        want[(int(s.source), op_by_name(s.op).op, s.ptsz)] += counts[s.name]
    assert got == want
    other = np.isin(ev["op"], [op_by_name(n).op for n in other_rets or {}]) & (ev["source"] == Source.CUDA)
    assert set(ev["ret_code"][~other].tolist()) == {ret}
    assert set(ev["pid"].tolist()) == {traced.pid}
    for s in symbols:
        sel = ev[(ev["source"] == int(s.source)) & (ev["op"] == op_by_name(s.op).op) & (((ev["flags"] & F_PTSZ) != 0) == s.ptsz)]
        if s.kind:  # driver copies: one op, the direction from the symbol's name
            sel = sel[sel["arg1"] == s.kind]
            assert len(sel) == counts[s.name], s.name
        for col, value in zip(("arg0", "arg1", "arg2"), EXPECTED[s.layout]):
            if value is not None:
                assert set(sel[col].tolist()) == {value}, (s.name, col)
        if s.layout in (Layout.LAUNCH, Layout.LAUNCH_CFG, Layout.CU_LAUNCH):
            assert len(set(sel["arg0"].tolist())) == 1 and sel["arg0"][0] != 0, s.name


@pytest.fixture(params=["session", "pair"])
def session_mode(request, bpf_required) -> bool:
    """Both ways the CUDA probes attach: one uprobe session program, or an entry/return pair (older kernels)."""
    if request.param == "session" and not caps.can("uprobe_session"):
        pytest.skip(f"no uprobe sessions on this kernel: {caps.probe_capabilities()['uprobe_session']['detail']}")
    return request.param == "session"


def test_every_runtime_symbol_on_the_real_libcudart(session_mode, tmp_path):
    # GIVEN every probed runtime function, each called a different number of times,
    # plus __cudaLaunchKernel, which tail-calls cudaLaunchKernel and must not count twice
    counts = {s.name: 3 + 2 * i for i, s in enumerate(RUNTIME_SYMBOLS)}
    plan = [f"{n}={c}" for n, c in counts.items()] + ["__cudaLaunchKernel=11"]
    counts["cudaLaunchKernel"] += 11
    # WHEN the real runtime (no driver here) runs them under the trace
    traced = trace_workload(tmp_path, str(REAL_CUDART), plan, "-s", str(SIZE), "-k", str(KIND), "-S", hex(STREAM),
                            family=CudaFamily([str(REAL_CUDART)], session=session_mode))
    # THEN each op has exactly its calls, cudaErrorInsufficientDriver, and the arguments passed
    assert "ret cudaMalloc 35" in traced.stdout
    # Without a driver, __cudaGetKernel hands back the stub itself (0) while cudaGetKernel fails (35).
    _check(traced, RUNTIME_SYMBOLS, counts, 35, {"cudaGetKernel": None})
    got = traced.events("source = 1 AND op = ?", (op_by_name("cudaGetKernel").op,))
    assert collections.Counter(got["ret_code"].tolist()) == {35: counts["cudaGetKernel"], 0: counts["__cudaGetKernel"]}
    assert traced.summary.dropped == 0


def test_every_driver_symbol_on_the_standin_libcuda(session_mode, tmp_path):
    counts = {s.name: 2 + 3 * i for i, s in enumerate(DRIVER_SYMBOLS)}
    lib = str(build_workloads().cuda)
    traced = trace_workload(tmp_path, lib, [f"{n}={c}" for n, c in counts.items()], "-s", str(SIZE), "-S", hex(STREAM),
                            family=CudaFamily([lib], session=session_mode))
    _check(traced, DRIVER_SYMBOLS, counts, 0)
    # allocations report the pointer the call wrote, read at return
    allocs = traced.events("source = 4 AND op = ?", (op_by_name("cuMemAlloc").op,))
    assert len(set(allocs["arg1"].tolist())) == counts["cuMemAlloc_v2"]
    assert (allocs["arg1"] >= 0x7F0000000000).all()


def test_runtime_and_driver_in_one_process_from_threads(bpf_required, tmp_path):
    # GIVEN 3 threads pinned to CPU 0 calling the stand-in runtime
    w = build_workloads()
    traced = trace_workload(tmp_path, str(w.cudart), ["cudaMalloc=1000", "cudaLaunchKernel_ptsz=300", "cudaFree=700"], "-t", "3", "-c", "0")
    ev = traced.events()
    names = collections.Counter((int(e["op"]), bool(e["flags"] & F_PTSZ)) for e in ev)
    assert names == {(1, False): 3000, (3, True): 900, (2, False): 2100}
    assert len(set(ev["tid"].tolist())) == 3
    assert set(ev["cpu"].tolist()) == {0}
    assert (ev["source"] == Source.CUDA).all()
    assert np.all(ev["duration"] > 0)
