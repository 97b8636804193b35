"""CPython frames walked in BPF (bpf/pystacks.bpf.h) and decoded in user space, for every interpreter at hand.

A test-only uprobe object (tests/kernel/bpf/pystack_probe.bpf.c) calls
wp_py_stack() the way an including family does, on the real libcudart's
cudaMalloc (returns 35 without a driver; the probe fires all the same).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from whyprobe.kernel.elfsym import resolve
from whyprobe.kernel.bpfobject import BpfObject
from whyprobe.kernel.libbpf import map_lookup
from whyprobe.kernel.loader import ProbeSet
from whyprobe.kernel.ring import RingReader
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.stacks import StacksFamily, symbolize_native
from whyprobe.events import EVENT_DTYPE, F_HAS_PYSTACK

pytestmark = pytest.mark.usefixtures("bpf_required")

ROOT = Path(__file__).resolve().parents[2]
LIBCUDART = ROOT / ".venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12"
PYENV = Path("/root/.pyenv/versions")
WORK = '''import ctypes, sys, time
lib = ctypes.CDLL(sys.argv[1])
def inner():
    p = ctypes.c_void_p()
    return lib.cudaMalloc(ctypes.byref(p), 1024)
def outer():
    return inner()
print('ready', flush=True); sys.stdin.readline()
print(outer(), flush=True)
sys.stdin.readline()
'''


def _interpreters() -> list[str]:
    found = [sys.executable]
    for minor in (10, 11, 12, 13):
        found += sorted(str(p) for p in PYENV.glob(f"3.{minor}.*/bin/python3.{minor}"))[:1]
    return found


@pytest.fixture(scope="module")
def probe_object(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpf") / "pystack_probe.bpf.o"
    bpf = ROOT / "src/whyprobe/bpf"
    subprocess.run(
        ["clang", "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Werror", f"-I{bpf}",
         "-c", str(ROOT / "tests/kernel/bpf/pystack_probe.bpf.c"), "-o", str(out)],
        check=True,
    )
    return out


@pytest.mark.parametrize("python", _interpreters())
def test_cuda_call_stack_names_the_python_file_function_and_line(python: str, probe_object: Path, tmp_path: Path) -> None:
    if not LIBCUDART.exists():
        pytest.fail(f"libcudart wheel missing: {LIBCUDART}")
    # GIVEN work.py calling cudaMalloc from inner() line 5, via outer() line 7 and the module line 9
    work = tmp_path / "work.py"
    work.write_text(WORK)
    proc = subprocess.Popen([python, str(work), str(LIBCUDART)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        with ProbeSet(capture_stacks=True) as ps:
            obj = BpfObject(probe_object)
            ps.objects.append(obj)
            obj.load()
            ps._learn_shared_maps(obj)
            offsets, _ = resolve(str(LIBCUDART), ["cudaMalloc"])
            obj.attach_uprobe("handle_probe", str(LIBCUDART), offsets["cudaMalloc"], pid=proc.pid)
            ps.add_targets([proc.pid])
            fam = StacksFamily()
            assert proc.stdout.readline().strip() == "ready"  # libpython is mapped: _PyRuntime can be found
            fam.attach(ps, TargetSpec(pids=[proc.pid]))
            ring = RingReader(ps.events_fd, EVENT_DTYPE)
            # WHEN the call happens under the probe
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "35"
            [rec] = ring.poll(100)
            fam.on_batch(np.array([rec]))
            raw = map_lookup(ps.stacks_fd, int(rec["stack_id"]).to_bytes(4, "little"), 127 * 8)
            native = symbolize_native(proc.pid, [ip for ip in np.frombuffer(raw, "<u8").tolist() if ip])
            ring.close()
    finally:
        proc.stdin.write("done\n")
        proc.stdin.close()
        proc.wait(timeout=10)
    # THEN the event carries a Python stack whose frames are work.py:5 inner, :7 outer, :9 <module>
    assert rec["flags"] & F_HAS_PYSTACK
    _, frames = fam._py_frames[(proc.pid, int(rec["aux"]))]
    assert [(f["f"], f["s"], f["l"], f["py"]) for f in frames] == [
        (str(work), "inner", 5, True),
        (str(work), "outer", 7, True),
        (str(work), "<module>", 9, True),
    ]
    # AND the innermost native frame is cudaMalloc in libcudart
    assert native[0]["s"] == "cudaMalloc" and native[0]["f"].endswith("libcudart.so.12")
