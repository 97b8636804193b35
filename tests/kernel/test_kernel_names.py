"""Kernel names of real launches: runtime launches by host stub pointer (a C++ program built here with
g++, mangled namespaced/templated names) and driver launches of handles from cuModuleGetFunction,
cuLibraryGetKernel and cuKernelGetFunction (stand-in libcuda). `stats --by kernel` counts them exactly."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cuda_helpers import trace_released
from whyprobe.commands import main
from whyprobe.demo.build import build_workloads
from whyprobe.probes.cuda import CudaFamily
from whyprobe.store.reader import open_trace

pytestmark = pytest.mark.usefixtures("bpf_required")

# Launches by pointer, as nvcc's stubs do: cudaLaunchKernel(&stub, grid, block, args, shmem, stream).
RUNTIME_PROGRAM = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
struct dim3 { unsigned x, y, z; };
typedef int (*launch_t)(const void *, dim3, dim3, void **, size_t, void *);
typedef int (*get_kernel_t)(void **, const void *);

namespace ampere {
__attribute__((noinline)) void sgemm_128x64_tn(float *a, int n) { if (n < 0) a[0] = 1; }
}
namespace demo {
template <typename T, int N> __attribute__((noinline)) void scale(T *a, int n) { if (n < 0) a[0] = N; }
}

static void run(launch_t launch, const void *fn, int times)
{
	dim3 grid = {4, 2, 1}, block = {32, 1, 1};
	for (int i = 0; i < times; i++)
		if (launch(fn, grid, block, nullptr, 0, nullptr) != 0)
			exit(3);
}

int main(int argc, char **argv)
{
	void *lib = dlopen(argv[1], RTLD_NOW);
	if (!lib)
		return 2;
	launch_t launch = (launch_t)dlsym(lib, "cudaLaunchKernel");
	char line[16];
	printf("ready\n");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 4;
	void *jit = malloc(64); /* code the symbol tables do not know: stays hex */
	/* CUDA 13 stubs: __cudaGetKernel(&handle, stub) once, then launch the handle. */
	get_kernel_t get_kernel = (get_kernel_t)dlsym(lib, "__cudaGetKernel");
	void *handle = nullptr;
	if (get_kernel(&handle, (const void *)&demo::scale<float, 8>) != 0 || handle == (void *)&demo::scale<float, 8>)
		return 5;
	run(launch, handle, 13);
	run(launch, (const void *)&ampere::sgemm_128x64_tn, 7);
	run(launch, (const void *)&demo::scale<float, 4>, 11);
	run(launch, (const void *)&demo::scale<double, 2>, 3);
	run(launch, jit, 5);
	printf("jit %p\n", jit);
	return 0;
}
"""

# Handles by name from the driver, then launched: Triton's path.
DRIVER_PROGRAM = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
typedef int (*get_t)(void **, void *, const char *);
typedef int (*kfn_t)(void **, void *);
typedef int (*launch_t)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **, void **);

int main(int argc, char **argv)
{
	void *lib = dlopen(argv[1], RTLD_NOW);
	get_t get_function = (get_t)dlsym(lib, "cuModuleGetFunction");
	get_t get_kernel = (get_t)dlsym(lib, "cuLibraryGetKernel");
	kfn_t kernel_function = (kfn_t)dlsym(lib, "cuKernelGetFunction");
	launch_t launch = (launch_t)dlsym(lib, "cuLaunchKernel");
	char line[16];
	void *fused, *flash_k, *flash_f, *missing = 0;
	printf("ready\n");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 4;
	if (get_function(&fused, (void *)0x1000, "triton_poi_fused_add_mul_0") || get_kernel(&flash_k, (void *)0x2000, "_ZN5flash16flash_fwd_kernelILi128ELb1EEEvPfi")
	    || kernel_function(&flash_f, flash_k) || get_function(&missing, (void *)0x1000, "") != 500)
		return 5;
	for (int i = 0; i < 9; i++) launch(fused, 1, 1, 1, 32, 1, 1, 0, 0, 0, 0);
	for (int i = 0; i < 4; i++) launch(flash_f, 1, 1, 1, 32, 1, 1, 0, 0, 0, 0);
	for (int i = 0; i < 2; i++) launch(flash_k, 1, 1, 1, 32, 1, 1, 0, 0, 0, 0);
	for (int i = 0; i < 3; i++) launch((void *)0xdead0, 1, 1, 1, 32, 1, 1, 0, 0, 0, 0);
	return 0;
}
"""


def _build(tmp_path: Path, name: str, source: str, compiler: str) -> Path:
    cc = shutil.which(compiler)
    if cc is None:
        pytest.fail(f"{compiler} not installed")
    src = tmp_path / (name + (".cc" if compiler == "g++" else ".c"))
    src.write_text(source)
    out = tmp_path / name
    subprocess.run([cc, "-O1", "-g", "-fno-omit-frame-pointer", "-o", str(out), str(src), "-ldl"], check=True, capture_output=True)
    return out


def _trace(tmp_path: Path, program: Path, lib: Path) -> tuple[Path, str]:
    proc = subprocess.Popen([str(program), str(lib)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    db = tmp_path / "t.db"
    trace_released(db, [CudaFamily([str(lib)])], proc)
    out = proc.stdout.read()
    assert proc.wait() == 0, out
    return db, out


def _by_kernel(db: Path, capsys) -> dict[tuple[str, str], dict]:
    assert main(["stats", str(db), "--by", "kernel", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    return {(r["op"], r["kernel"]): r for r in rows}


def test_runtime_launches_name_their_stubs(tmp_path: Path, capsys) -> None:
    # GIVEN a C++ program launching three mangled kernels and one JIT buffer by pointer
    program = _build(tmp_path, "launcher", RUNTIME_PROGRAM, "g++")
    db, out = _trace(tmp_path, program, build_workloads().cudart)
    jit = int(out.split("jit ")[1].split()[0], 16)
    # WHEN stats groups the launches by kernel
    rows = _by_kernel(db, capsys)
    # THEN each kernel has its exact count under its demangled name; the JIT buffer stays hex
    counts = {k: r["count"] for k, r in rows.items()}
    assert counts == {
        ("cudaLaunchKernel", "ampere::sgemm_128x64_tn(float*, int)"): 7,
        ("cudaLaunchKernel", "void demo::scale<float, 4>(float*, int)"): 11,
        ("cudaLaunchKernel", "void demo::scale<double, 2>(double*, int)"): 3,
        ("cudaLaunchKernel", f"{jit:#x}"): 5,
        ("cudaLaunchKernel", "void demo::scale<float, 8>(float*, int)"): 13,
    }
    for r in rows.values():
        assert {"source", "op", "count", "p50_ns", "p95_ns", "p99_ns", "p999_ns", "max_ns", "total_ns", "errors"} <= set(r)
        assert r["errors"] == 0 and r["p50_ns"] > 0
    with open_trace(db) as t:
        named = set(t.conn.execute("SELECT name, via FROM kernel_names"))
    assert ("ampere::sgemm_128x64_tn(float*, int)", f"symbols of {program}") in named
    # the handle takes its stub's name (the stub itself is named from the symbols too)
    assert ("void demo::scale<float, 8>(float*, int)", f"cudaGetKernel of a stub in {program}") in named


def test_driver_launches_name_handles_from_lookups(tmp_path: Path, capsys) -> None:
    # GIVEN handles from cuModuleGetFunction, cuLibraryGetKernel and cuKernelGetFunction, launched with cuLaunchKernel
    program = _build(tmp_path, "driver", DRIVER_PROGRAM, "gcc")
    db, _ = _trace(tmp_path, program, build_workloads().cuda)
    rows = _by_kernel(db, capsys)
    flash = "void flash::flash_fwd_kernel<128, true>(float*, int)"
    # THEN the function and the kernel handle both carry the library's name; an unknown handle stays hex
    assert {k: r["count"] for k, r in rows.items()} == {
        ("cuLaunchKernel", "triton_poi_fused_add_mul_0"): 9,
        ("cuLaunchKernel", flash): 4 + 2,
        ("cuLaunchKernel", "0xdead0"): 3,
    }
    with open_trace(db) as t:
        lookups = t.conn.execute(
            "SELECT o.name, e.ret_code, e.detail FROM events e JOIN ops o ON o.source_id = e.source AND o.op_id = e.op "
            "WHERE o.name IN ('cuModuleGetFunction', 'cuLibraryGetKernel', 'cuKernelGetFunction') ORDER BY e.timestamp"
        ).fetchall()
        vias = sorted(v for (v,) in t.conn.execute("SELECT via FROM kernel_names"))
    assert lookups == [
        ("cuModuleGetFunction", 0, "triton_poi_fused_add_mul_0"),
        ("cuLibraryGetKernel", 0, "_ZN5flash16flash_fwd_kernelILi128ELb1EEEvPfi"),
        ("cuKernelGetFunction", 0, None),
        ("cuModuleGetFunction", 500, None),
    ]
    assert vias == ["cuKernelGetFunction", "cuLibraryGetKernel", "cuModuleGetFunction"]
