"""Build the C workloads (stand-in CUDA runtime/driver, the call driver) on demand.

Tests, benches and the demo all build through here, so they run the same
binaries: gcc -O2 with frame pointers (the stand-in's entry points start with
`push %rbp` like the real runtime), cached under a directory named by the hash
of the sources and flags, so a changed source rebuilds and nothing else does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from whyprobe.errors import WhyprobeError

SRC_DIR = Path(__file__).resolve().parent / "workloads"
CFLAGS = ["-O2", "-g", "-fno-omit-frame-pointer", "-fPIC", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror"]

# gcc gives tiny leaf functions no frame even with -fno-omit-frame-pointer; instrumenting
# every function makes each one a non-leaf that starts with `push %rbp`.
LIB_CFLAGS = ["-finstrument-functions"]


@dataclass(frozen=True)
class Workloads:
    cudart: Path  # stand-in libcudart.so.12
    cuda: Path  # stand-in libcuda.so.1
    driver: Path  # cuda_workload executable

    @property
    def lib_dir(self) -> Path:
        return self.cudart.parent


def default_cache_dir() -> Path:
    base = os.environ.get("WHYPROBE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "whyprobe")
    return Path(base) / "workloads"


def _digest() -> str:
    h = hashlib.sha256(" ".join(CFLAGS + LIB_CFLAGS).encode())
    for src in sorted(SRC_DIR.glob("*.c")):
        h.update(src.name.encode())
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def _gcc(args: list[str]) -> None:
    cc = shutil.which(os.environ.get("CC", "gcc"))
    if not cc:
        raise WhyprobeError("gcc not found: the demo workloads are C programs built on first use (apt-get install gcc)")
    res = subprocess.run([cc, *args], capture_output=True, text=True)
    if res.returncode != 0:
        raise WhyprobeError(f"building a workload failed: {' '.join(args[-3:])}: {res.stderr.strip()[-2000:]}")


def build_workloads(cache_dir: str | os.PathLike | None = None) -> Workloads:
    """Paths of the built workloads, compiling them first if this source version was never built."""
    out = Path(cache_dir) if cache_dir else default_cache_dir()
    out = out / _digest()
    built = Workloads(out / "libcudart.so.12", out / "libcuda.so.1", out / "cuda_workload")
    if all(p.exists() for p in (built.cudart, built.cuda, built.driver)):
        return built
    # Build into a private directory, then rename: concurrent builders never see half a file.
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    src = str(SRC_DIR / "standin_cudart.c")
    try:
        _build(tmp, src)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return built


def _build(tmp: Path, src: str) -> None:
    _gcc([*CFLAGS, *LIB_CFLAGS, "-shared", "-DSTANDIN_RUNTIME", "-Wl,-soname,libcudart.so.12", "-o", str(tmp / "libcudart.so.12"), src, "-lpthread"])
    _gcc([*CFLAGS, *LIB_CFLAGS, "-shared", "-DSTANDIN_DRIVER", "-Wl,-soname,libcuda.so.1", "-o", str(tmp / "libcuda.so.1"), src, "-lpthread"])
    _gcc([*CFLAGS, "-o", str(tmp / "cuda_workload"), str(SRC_DIR / "cuda_workload.c"), "-ldl", "-lpthread"])
