"""Finding CUDA libraries the way a process would: its maps, its dynamic linker's search, pip wheels, conda.

Nothing here assumes a path. For a running process the truth is
/proc/PID/maps. For a command about to start, the dynamic linker's order is
followed (LD_LIBRARY_PATH of the child's environment, the executable's
RUNPATH, the ldconfig cache, the default directories), plus the
`site-packages/nvidia/*/lib` directories of the Python it runs, which is where
pip wheels put libcudart and which torch finds through its own RPATH.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from whyprobe.errors import WhyprobeError

# Versioned names (libcudart.so.12, .so.12.9.79, .so.13) and libcuda.so.1; not libcudart_static.a.
CUDA_LIB_RE = re.compile(r"^lib(cudart|cuda)\.so(\.\d+)*$")
DEFAULT_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")
CUDA_DIRS = ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/wsl/lib", "/usr/local/nvidia/lib64")


@dataclass(frozen=True)
class LibraryHit:
    path: str  # real path
    via: str  # how it was found, for `check` and warnings


def is_cuda_library(path: str) -> bool:
    return bool(CUDA_LIB_RE.match(os.path.basename(path)))


def mapped_files(pid: int) -> list[str]:
    """Executable file mappings of a process, in maps order (empty if it is gone or unreadable)."""
    out: list[str] = []
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and "x" in parts[1] and parts[5].startswith("/"):
                    path = parts[5].rstrip("\n")
                    if path not in out:
                        out.append(path)
    except OSError:
        pass
    return out


def cuda_maps(pid: int) -> list[str]:
    """CUDA libraries a process has mapped executable (dlopen'd ones included)."""
    return [p for p in mapped_files(pid) if is_cuda_library(p) and not p.endswith(" (deleted)")]


def cuda_processes() -> dict[int, list[str]]:
    """Every process that maps libcudart/libcuda now (auto-discovery for `trace`)."""
    found: dict[int, list[str]] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            libs = cuda_maps(int(entry))
            if libs:
                found[int(entry)] = libs
    return found


@lru_cache(maxsize=1)
def ldconfig_cache() -> tuple[tuple[str, str], ...]:
    """(soname, path) pairs of `ldconfig -p`, x86-64 entries."""
    exe = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run([exe, "-p"], capture_output=True, text=True, check=False, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    pairs = []
    for line in out.splitlines():
        m = re.match(r"\s*(\S+)\s+\(([^)]*)\)\s+=>\s+(\S+)", line)
        if m and ("x86-64" in m.group(2) or "64bit" in m.group(2)):
            pairs.append((m.group(1), m.group(3)))
    return tuple(pairs)


def _cuda_in_dir(d: str) -> list[str]:
    try:
        return sorted(os.path.join(d, n) for n in os.listdir(d) if CUDA_LIB_RE.match(n))
    except OSError:
        return []


def _python_nvidia_dirs(prefix: str) -> list[str]:
    """nvidia/*/lib (and nvidia/cu*/lib) of a Python prefix's site-packages."""
    pats = ("lib/python3*/site-packages/nvidia/*/lib", "lib/python3*/site-packages/nvidia/*/*/lib", "lib/python3*/dist-packages/nvidia/*/lib")
    return sorted({d for pat in pats for d in glob.glob(os.path.join(prefix, pat))})


def _python_prefix_of(executable: str) -> str | None:
    """The prefix a Python executable runs with: a venv (pyvenv.cfg next to bin/) or its install prefix."""
    exe = Path(executable)
    if (exe.parent.parent / "pyvenv.cfg").exists():
        return str(exe.parent.parent)
    real = exe.resolve()
    if re.match(r"python3(\.\d+)?$", real.name):
        return str(real.parent.parent)
    return None


def _conda_dirs() -> list[str]:
    roots = [os.environ.get("CONDA_PREFIX", ""), "/opt/conda", os.path.expanduser("~/miniconda3"), os.path.expanduser("~/anaconda3")]
    dirs = []
    for root in filter(None, roots):
        dirs.append(os.path.join(root, "lib"))
        dirs += glob.glob(os.path.join(root, "envs/*/lib"))
    return dirs


def _add(hits: dict[str, LibraryHit], path: str, via: str) -> None:
    try:
        real = os.path.realpath(path)
    except OSError:
        return
    if os.path.isfile(real) and real not in hits:
        hits[real] = LibraryHit(real, via)


def find_cuda_libraries(*, pids: list[int] = (), include_installed: bool = True) -> tuple[list[LibraryHit], list[str]]:
    """CUDA libraries in the given processes' maps and (if asked) installed on this host.

    Returns the hits (real paths, deduplicated) and a description of every place searched.
    """
    hits: dict[str, LibraryHit] = {}
    searched: list[str] = []
    for pid in pids:
        searched.append(f"/proc/{pid}/maps")
        for p in cuda_maps(pid):
            _add(hits, p, f"maps of pid {pid}")
    if not include_installed:
        return list(hits.values()), searched
    searched.append("ldconfig -p")
    for soname, path in ldconfig_cache():
        if CUDA_LIB_RE.match(soname):
            _add(hits, path, "ldconfig")
    dirs = [(d, "LD_LIBRARY_PATH") for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    dirs += [(d, "system") for d in DEFAULT_DIRS + CUDA_DIRS]
    prefixes = dict.fromkeys([sys.prefix, sys.base_prefix])
    dirs += [(d, f"pip wheel in {p}") for p in prefixes for d in _python_nvidia_dirs(p)]
    dirs += [(d, "conda") for d in _conda_dirs()]
    for d, via in dirs:
        searched.append(d)
        for p in _cuda_in_dir(d):
            _add(hits, p, via)
    return list(hits.values()), searched


def _which(name: str, env: dict[str, str]) -> str | None:
    if "/" in name:
        return os.path.abspath(name) if os.path.exists(name) else None
    return shutil.which(name, path=env.get("PATH", os.defpath))


def _runpath(executable: str) -> list[str]:
    """DT_RUNPATH/DT_RPATH directories of an ELF executable ($ORIGIN expanded)."""
    try:
        with open(executable, "rb") as f:
            elf = ELFFile(f)
            for sec in elf.iter_sections():
                if not isinstance(sec, DynamicSection):
                    continue
                dirs = []
                for tag in sec.iter_tags():
                    if tag.entry.d_tag in ("DT_RUNPATH", "DT_RPATH"):
                        raw = getattr(tag, "runpath", None) or getattr(tag, "rpath", "")
                        origin = os.path.dirname(os.path.realpath(executable))
                        dirs += [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for d in raw.split(":") if d]
                return dirs
    except (ELFError, OSError):  # not an ELF (a script), or unreadable: no RUNPATH
        return []
    return []


def _interpreter_of(executable: str) -> str | None:
    """For a `#!` script, the interpreter it names (handles `/usr/bin/env python3`)."""
    try:
        with open(executable, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    parts = head[2:].split(b"\n", 1)[0].decode(errors="replace").split()
    if not parts:
        return None
    if os.path.basename(parts[0]) == "env" and len(parts) > 1:
        return shutil.which(parts[1])
    return parts[0]


def _has_static_runtime(executable: str) -> bool:
    """nvcc links cudart statically by default: the runtime lives in the executable's .symtab."""
    from whyprobe.kernel.elfsym import lookup

    try:
        return bool(lookup(executable, ("cudaLaunchKernel", "cuLaunchKernel")))
    except WhyprobeError:
        return False


def resolve_for_command(argv: list[str], env: dict[str, str] | None = None) -> tuple[list[LibraryHit], list[str]]:
    """CUDA libraries the command will load, in the order its dynamic linker would find them.

    Every candidate is returned (not only the first per name): a program may dlopen
    a different copy than the linker's first choice, and attaching to an unused
    file costs nothing.
    """
    env = dict(os.environ if env is None else env)
    hits: dict[str, LibraryHit] = {}
    searched: list[str] = []
    exe = _which(argv[0], env) if argv else None
    dirs: list[tuple[str, str]] = []
    dirs += [(d, "LD_LIBRARY_PATH") for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]
    if exe:
        dirs += [(d, f"RUNPATH of {exe}") for d in _runpath(exe)]
        python = _interpreter_of(exe) or exe
        prefix = _python_prefix_of(python)
        if prefix:
            dirs += [(d, f"pip wheel of {python}") for d in _python_nvidia_dirs(prefix)]
    if exe and _has_static_runtime(exe):
        _add(hits, exe, "static runtime in the executable")
    for d, via in dirs:
        searched.append(d)
        for p in _cuda_in_dir(d):
            _add(hits, p, via)
    searched.append("ldconfig -p")
    for soname, path in ldconfig_cache():
        if CUDA_LIB_RE.match(soname):
            _add(hits, path, "ldconfig")
    for d in DEFAULT_DIRS + CUDA_DIRS:
        searched.append(d)
        for p in _cuda_in_dir(d):
            _add(hits, p, "system")
    return list(hits.values()), searched


def command_executables(argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """Real paths of the ELF files a command will run: its executable and, for a `#!` script
    (npx, an agent's launcher), the interpreter it names."""
    env = dict(os.environ if env is None else env)
    exe = _which(argv[0], env) if argv else None
    if exe is None:
        return []
    found = [exe]
    interpreter = _interpreter_of(exe)
    if interpreter:
        found.append(interpreter)
    return list(dict.fromkeys(os.path.realpath(p) for p in found if os.path.isfile(p)))
