"""Stacks: native user stacks symbolized with pyelftools, and CPython frames (3.10-3.13) decoded in user space.

The BPF side records native IPs in the shared `stacks` map (frame pointers)
and, where an object includes bpf/pystacks.bpf.h, (code object, instruction)
pairs in `py_stacks` under the id it puts in wp_event.aux (WP_F_HAS_PYSTACK).
This module tells the kernel where each target's interpreter keeps its state
(`py_procs`), and turns both into `stack_traces` rows:

    frames = [{"s": symbol, "f": file, "l": line, "py": bool}, ...]

Python frames come first (innermost first), then the native frames (innermost
first). A stack with Python frames gets its own hash (FNV-1a 64 over the
native IPs, then every (code, instruction) pair), since many Python call
sites share one native stack through the interpreter loop.

Everything that reads a target's memory happens while the process is alive
(on the batch that first shows a stack); a process gone by then keeps
module+offset frames.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import struct
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from whyprobe.kernel.libbpf import map_lookup, map_update
from whyprobe.kernel.loader import ProbeSet
from whyprobe.probes.base import TargetSpec
from whyprobe.events import F_HAS_PYSTACK

log = logging.getLogger(__name__)

FNV_OFFSET, FNV_PRIME, MASK64 = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1
PY_MAX_FRAMES = 32
PY_PROC = struct.Struct("<Q12I")  # struct py_proc in bpf/pystacks.bpf.h
PY_FRAME = struct.Struct("<QQ")


def fnv1a64(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK64
    return h


def as_int64(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


# ---- native symbolization ----------------------------------------------------------------


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    offset: int
    path: str


def read_maps(pid: int) -> list[Mapping]:
    out = []
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) < 6:
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append(Mapping(lo, hi, int(parts[2], 16), parts[5].strip()))
    except OSError:
        pass
    return out


class ElfSymbols:
    """Function symbols of one ELF file (.symtab, else .dynsym) and its PT_LOAD segments."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.segments: list[tuple[int, int, int]] = []  # (file offset, vaddr, filesz)
        self.addrs: list[int] = []
        self.entries: list[tuple[int, int, str]] = []  # (start, size, name)
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            self.segments = [(s["p_offset"], s["p_vaddr"], s["p_filesz"]) for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            funcs: dict[int, tuple[int, str]] = {}
            for name in (".dynsym", ".symtab"):
                sec = elf.get_section_by_name(name)
                if not isinstance(sec, SymbolTableSection):
                    continue
                for sym in sec.iter_symbols():
                    if sym["st_info"]["type"] in ("STT_FUNC", "STT_GNU_IFUNC") and sym["st_value"] and sym.name:
                        funcs.setdefault(sym["st_value"], (sym["st_size"], sym.name))
            for addr in sorted(funcs):
                self.addrs.append(addr)
                self.entries.append((addr, *funcs[addr]))

    def vaddr(self, file_offset: int) -> int | None:
        for off, vaddr, size in self.segments:
            if off <= file_offset < off + max(size, 1):
                return vaddr + file_offset - off
        return None

    def lookup(self, vaddr: int) -> str | None:
        i = bisect.bisect_right(self.addrs, vaddr) - 1
        if i < 0:
            return None
        start, size, name = self.entries[i]
        if size and vaddr >= start + size:
            return None
        return name


@lru_cache(maxsize=256)
def _elf(path: str, _mtime_ns: int) -> ElfSymbols | None:
    try:
        return ElfSymbols(path)
    except (OSError, ELFError, ValueError) as exc:
        log.info("no symbols from %s: %s", path, exc)
        return None


def _open_elf(pid: int, m: Mapping) -> ElfSymbols | None:
    """The mapped file, also when deleted or replaced since (then through /proc/PID/map_files)."""
    candidates = [f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"]
    if m.path.startswith("/") and not m.path.endswith(" (deleted)"):
        candidates.insert(0, m.path)
    for path in candidates:
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            continue
        elf = _elf(path, mtime)
        if elf is not None:
            return elf
    return None


def symbolize_native(pid: int, ips: Sequence[int], maps: list[Mapping] | None = None) -> list[dict]:
    """Frames for user IPs of `pid`: symbol and file, or module+offset when there is no symbol."""
    maps = maps if maps is not None else read_maps(pid)
    starts = [m.start for m in maps]
    frames = []
    for n, ip in enumerate(ips):
        # Return addresses point after the call: look up ip-1 for all but the innermost frame.
        probe = ip - 1 if n else ip
        i = bisect.bisect_right(starts, probe) - 1
        if i < 0 or probe >= maps[i].end:
            frames.append({"s": f"{ip:#x}", "f": "", "py": False})
            continue
        m = maps[i]
        module = m.path.removesuffix(" (deleted)")
        file_off = probe - m.start + m.offset
        elf = _open_elf(pid, m) if module.startswith("/") else None
        name = None
        if elf is not None:
            vaddr = elf.vaddr(file_off)
            name = elf.lookup(vaddr) if vaddr is not None else None
        frames.append({"s": name or f"{Path(module).name or module}+{file_off:#x}", "f": module, "py": False})
    return frames


# ---- CPython --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PyLayout:
    """Offsets of FACTS-cuda-cpython.md 2.3 for one minor version."""

    version: int
    interp_head: int
    threads_head: int
    ts_next: int
    ts_tid: int
    ts_frame: int
    cframe_current: int
    frame_code: int
    frame_back: int
    frame_instr: int
    frame_owner: int
    co_filename: int
    co_name: int
    co_qualname: int
    co_firstlineno: int
    co_linetable: int
    co_code: int  # 3.10: co_code (bytes*); 3.11+: co_code_adaptive (inline)
    str_ascii: int
    str_compact: int


LAYOUTS = {
    310: PyLayout(310, 32, 8, 8, 176, 24, -1, 32, 24, 96, 0, 104, 112, 0, 40, 120, 48, 48, 72),
    311: PyLayout(311, 40, 16, 8, 160, 56, 8, 32, 48, 56, 69, 112, 120, 128, 72, 136, 184, 48, 72),
    312: PyLayout(312, 40, 72, 8, 144, 56, 0, 0, 8, 56, 70, 112, 120, 128, 68, 136, 192, 40, 56),
    313: PyLayout(313, 632, 7344, 8, 160, 72, -1, 0, 8, 56, 70, 112, 120, 128, 68, 136, 200, 40, 56),
}


@dataclass(frozen=True)
class PyTarget:
    pid: int
    version: int
    runtime: int  # address of _PyRuntime
    binary: str

    @property
    def layout(self) -> PyLayout:
        return LAYOUTS[self.version]

    def config(self) -> bytes:
        lay = self.layout
        return PY_PROC.pack(
            self.runtime, lay.version, lay.interp_head, lay.threads_head, lay.ts_next, lay.ts_tid, lay.ts_frame,
            lay.cframe_current & 0xFFFFFFFF, lay.frame_code, lay.frame_back, lay.frame_instr, lay.frame_owner, 0,
        )


_VERSION_RE = re.compile(r"(?:libpython|python)3\.(\d+)")


@lru_cache(maxsize=64)
def _runtime_facts(path: str, _mtime_ns: int) -> tuple[int | None, int | None]:
    """(`_PyRuntime` vaddr, vaddr of the offset-0 PT_LOAD) of one file: parsed once per file version,
    so finding the interpreter again after an exec costs a maps read, not an ELF parse."""
    vaddr = _runtime_vaddr(path)
    if vaddr is None:
        return None, None
    with open(path, "rb") as fh:
        loads = [s for s in ELFFile(fh).iter_segments() if s["p_type"] == "PT_LOAD"]
    first = min((s["p_vaddr"] for s in loads if s["p_offset"] == 0), default=None)
    return vaddr, first


def _runtime_vaddr(path: str) -> int | None:
    """`_PyRuntime` symbol value, or the start of the `.PyRuntime` section (stripped builds)."""
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        for name in (".dynsym", ".symtab"):
            sec = elf.get_section_by_name(name)
            if isinstance(sec, SymbolTableSection):
                syms = sec.get_symbol_by_name("_PyRuntime")
                if syms:
                    return syms[0]["st_value"]
        sec = elf.get_section_by_name(".PyRuntime")
        return sec["sh_addr"] if sec is not None else None


def _load_bias(first_vaddr: int | None, maps: list[Mapping], mapped_as: str) -> int | None:
    start = next((m.start for m in maps if m.path == mapped_as and m.offset == 0), None)
    if first_vaddr is None or start is None:
        return None
    return start - (first_vaddr & ~0xFFF)


def _start_code(pid: int) -> str:
    """Field 26 of /proc/PID/stat (start of the text segment): changes when the process execs."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[23]
    except (OSError, IndexError):
        return ""


def read_mem(pid: int, addr: int, size: int) -> bytes:
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
            f.seek(addr)
            return f.read(size)
    except (OSError, ValueError, OverflowError):
        return b""


def discover_python(pid: int) -> PyTarget | None:
    """The interpreter `pid` runs: version and _PyRuntime address, from libpython or the executable."""
    maps = read_maps(pid)
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None
    names = [m.path for m in maps if "libpython3" in Path(m.path).name] + [exe]
    for mapped in dict.fromkeys(names):
        path = mapped if os.path.exists(mapped) else f"/proc/{pid}/exe"
        try:
            vaddr, first = _runtime_facts(path, os.stat(path).st_mtime_ns)
        except (OSError, ELFError):
            continue
        bias = _load_bias(first, maps, mapped) if vaddr is not None else None
        if vaddr is None or bias is None:
            continue
        runtime = vaddr + bias
        head = read_mem(pid, runtime, 16)
        if head[:8] == b"xdebugpy":
            minor = (struct.unpack_from("<Q", head, 8)[0] >> 16) & 0xFF
        else:
            m = _VERSION_RE.search(Path(mapped).name) or _VERSION_RE.search(os.path.realpath(path))
            minor = int(m.group(1)) if m else 0
        version = 300 + minor
        if version in LAYOUTS:
            return PyTarget(pid, version, runtime, mapped)
        log.info("pid %d runs Python 3.%d: no frame layout for it", pid, minor)
        return None
    return None


def _varint(data: bytes, i: int) -> tuple[int, int]:
    b = data[i]
    i += 1
    val, shift = b & 63, 6
    while b & 64:
        b = data[i]
        i += 1
        val |= (b & 63) << shift
        shift += 6
    return val, i


def line_for(version: int, linetable: bytes, firstlineno: int, addr: int) -> int | None:
    """Source line of byte offset `addr` in the bytecode (FACTS 2.5)."""
    if version == 310:
        line, end = firstlineno, 0
        for i in range(0, len(linetable) - 1, 2):
            sdelta, ldelta = linetable[i], struct.unpack("b", linetable[i + 1 : i + 2])[0]
            start, end = end, end + sdelta
            if ldelta != -128:
                line += ldelta
            if start <= addr < end:
                return None if ldelta == -128 else line
        return None
    line, pos, i = firstlineno, 0, 0
    while i < len(linetable):
        b = linetable[i]
        i += 1
        code, length = (b >> 3) & 15, (b & 7) + 1
        delta: int | None = 0
        if code == 15:
            delta = None
        elif code == 14:
            v, i = _varint(linetable, i)
            delta = -(v >> 1) if v & 1 else v >> 1
            _, i = _varint(linetable, i)  # end line delta
            _, i = _varint(linetable, i)  # column
            _, i = _varint(linetable, i)  # end column
        elif code == 13:
            v, i = _varint(linetable, i)
            delta = -(v >> 1) if v & 1 else v >> 1
        elif code >= 10:
            delta = code - 10
            i += 2  # start and end column bytes
        else:
            i += 1  # short form: one column byte
        if delta is not None:
            line += delta
        if pos <= addr < pos + 2 * length:
            return line if delta is not None else None
        pos += 2 * length
    return None


@dataclass(frozen=True)
class CodeInfo:
    filename: str
    qualname: str
    firstlineno: int
    linetable: bytes
    code_start: int  # 3.11+: address of co_code_adaptive


def _read_str(pid: int, lay: PyLayout, obj: int) -> str:
    head = read_mem(pid, obj, 48)
    if len(head) < 40:
        return ""
    length = struct.unpack_from("<q", head, 16)[0]
    state = head[32]
    if length < 0 or length > 4096:
        return ""
    kind, ascii_ = (state >> 2) & 7, (state >> 6) & 1
    data = read_mem(pid, obj + (lay.str_ascii if ascii_ else lay.str_compact), length * max(kind, 1))
    codec = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}.get(kind, "latin-1")
    return data.decode(codec, "replace")


def _read_bytes_obj(pid: int, obj: int) -> bytes:
    size = struct.unpack("<q", read_mem(pid, obj + 16, 8) or b"\0" * 8)[0]
    return read_mem(pid, obj + 32, size) if 0 < size < 1 << 20 else b""


def read_code(pid: int, lay: PyLayout, code: int) -> CodeInfo | None:
    size = max(lay.co_filename, lay.co_name, lay.co_qualname, lay.co_firstlineno, lay.co_linetable, lay.co_code) + 8
    raw = read_mem(pid, code, size)
    if len(raw) < size:
        return None
    ptr = lambda off: struct.unpack_from("<Q", raw, off)[0]  # noqa: E731
    filename = _read_str(pid, lay, ptr(lay.co_filename))
    qualname = _read_str(pid, lay, ptr(lay.co_qualname if lay.co_qualname else lay.co_name))
    if not filename and not qualname:
        return None
    firstlineno = struct.unpack_from("<i", raw, lay.co_firstlineno)[0]
    linetable = _read_bytes_obj(pid, ptr(lay.co_linetable))
    start = code + lay.co_code if lay.version >= 311 else 0
    return CodeInfo(filename, qualname, firstlineno, linetable, start)


class PythonFrames:
    """Decodes (code, instruction) pairs of one process, caching code objects."""

    def __init__(self, target: PyTarget) -> None:
        self.target = target
        self._codes: dict[int, CodeInfo | None] = {}

    def frame(self, code: int, instr: int) -> dict | None:
        if code not in self._codes:
            self._codes[code] = read_code(self.target.pid, self.target.layout, code)
        info = self._codes[code]
        if info is None:
            return None
        if self.target.version == 310:
            addr = 2 * instr
        else:
            addr = instr - info.code_start
        line = line_for(self.target.version, info.linetable, info.firstlineno, addr) if addr >= 0 else None
        return {"s": info.qualname, "f": info.filename, "l": line or info.firstlineno, "py": True}


# ---- the family -----------------------------------------------------------------------------


class StacksFamily:
    """ProbeFamily for `--stack`: symbolizes native stacks and Python frames into stack_traces.

    It loads no object of its own: the stack map is shared (filled where
    capture_stacks is on, and by on-CPU samples) and py_procs/py_stacks live in
    each object that includes bpf/pystacks.bpf.h (cuda, profile). Session hooks
    used: tick(pids), on_stacks(seen), on_batch(records), and on_rows(rows) (to
    give events with Python frames their combined hash).

    The kernel walks a process's Python frames only once `py_procs` says where
    its interpreter is; until then its events carry native frames only. A
    launched command is configured for the tracer's holder process and then
    execs, and the periodic tick found the new interpreter up to ~300 ms later
    (#14.4: the first calls of a short workload had no Python frames). So a
    watcher thread looks at every new target every WATCH_POLL_S for its first
    WATCH_FOR_S, and configures it as soon as its interpreter is mapped. Native
    frames are symbolized at the end (from the maps seen while the process
    lived), keeping the reader thread free to decode Python frames while the
    process and its code objects still exist.
    """

    name = "stacks"
    WATCH_POLL_S = 0.002
    WATCH_FOR_S = 5.0

    def __init__(self) -> None:
        self.probes: ProbeSet | None = None
        self.pythons: dict[int, PythonFrames | None] = {}
        self.native: dict[int, tuple[list[int], list[dict]]] = {}  # hash -> (ips, frames), symbolized at the end
        self.combined: dict[int, tuple[list[int], list[dict], int]] = {}  # hash -> (ips, Python frames, native hash)
        self._unsymbolized: dict[int, tuple[int, list[int], list[Mapping]]] = {}  # hash -> (pid, ips, maps)
        self._py_frames: dict[tuple[int, int], tuple[list[tuple[int, int]], list[dict]]] = {}
        self._configured: set[tuple[int, int]] = set()  # (map fd, pid)
        # Last maps seen per pid, and what they looked like (an exec replaces them):
        # symbolization still works after a short-lived process has exited.
        self._maps: dict[int, list[Mapping]] = {}
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, str]] = {}  # pid -> (first seen, /proc/PID/stat start_code)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def attach(self, probes: ProbeSet, targets: TargetSpec) -> list[str]:
        self.probes = probes
        warnings = self.tick(targets.pids)
        self._watcher = threading.Thread(target=self._watch, name="whyprobe-pywatch", daemon=True)
        self._watcher.start()
        return warnings

    def _py_maps(self) -> list[tuple[int, int]]:
        out = []
        for obj in self.probes.objects if self.probes else []:
            if obj.loaded and "py_procs" in obj.map_names():
                out.append((obj.map_fd("py_procs"), obj.map_fd("py_stacks")))
        return out

    def tick(self, pids: Sequence[int]) -> list[str]:
        """Tell every pystacks-capable object where new targets keep their interpreter."""
        now = time.monotonic()
        for pid in pids:
            if pid not in self._watched:
                self._watched[pid] = (now, _start_code(pid))
            self._refresh(pid)
        return []

    def _refresh(self, pid: int) -> None:
        with self._lock:
            current = read_maps(pid)
            if current and current != self._maps.get(pid):
                execed = pid in self._maps and current[0] != self._maps[pid][0]
                self._maps[pid] = current
                # After an exec, or while the interpreter was not found yet (seen mid-exec, before
                # libpython is mapped): look again.
                if execed or self.pythons.get(pid, 0) is None:
                    self.pythons.pop(pid, None)
                    self._configured = {k for k in self._configured if k[1] != pid}
            if pid not in self.pythons:
                target = discover_python(pid)
                self.pythons[pid] = PythonFrames(target) if target else None
            py = self.pythons[pid]
            if py is None:
                return
            for procs_fd, _ in self._py_maps():
                if (procs_fd, pid) not in self._configured:
                    map_update(procs_fd, pid.to_bytes(4, "little"), py.target.config())
                    self._configured.add((procs_fd, pid))

    def _watch(self) -> None:
        """Configure new targets the moment they exec into an interpreter (see the class doc)."""
        rounds = 0
        while not self._stop.wait(self.WATCH_POLL_S):
            now = time.monotonic()
            rounds += 1
            for pid, (seen, code) in list(self._watched.items()):
                if now - seen > self.WATCH_FOR_S:
                    continue
                current = _start_code(pid)
                # An exec: look at once. No interpreter found yet (libpython not mapped yet,
                # or none at all): look again every few rounds, a maps read each.
                if current != code or (self.pythons.get(pid) is None and rounds % 3 == 0):
                    self._watched[pid] = (seen, current)
                    self._refresh(pid)

    def on_stacks(self, seen: Sequence[tuple[int, int, list[int]]]) -> None:
        cache: dict[int, list[Mapping]] = {}
        for pid, h, ips in seen:
            maps = cache.setdefault(pid, read_maps(pid) or self._maps.get(pid, []))
            self._unsymbolized[h] = (pid, list(ips), maps)

    def _symbolize(self) -> None:
        for h, (pid, ips, maps) in self._unsymbolized.items():
            self.native[h] = (ips, symbolize_native(pid, ips, maps))
        self._unsymbolized.clear()

    def _python_stack(self, pid: int, py_id: int) -> tuple[list[tuple[int, int]], list[dict]] | None:
        key = (pid, py_id)
        if key in self._py_frames:
            return self._py_frames[key]
        py = self.pythons.get(pid)
        if py is None:
            self.tick([pid])
            py = self.pythons.get(pid)
        for _, stacks_fd in self._py_maps():
            raw = map_lookup(stacks_fd, py_id.to_bytes(8, "little"), 8 + 16 * PY_MAX_FRAMES)
            if raw is None:
                continue
            n = min(struct.unpack_from("<I", raw)[0], PY_MAX_FRAMES)
            pairs = [PY_FRAME.unpack_from(raw, 8 + 16 * i) for i in range(n)]
            frames = [f for f in (py.frame(c, ins) for c, ins in pairs) if f] if py else []
            self._py_frames[key] = (pairs, frames)
            return self._py_frames[key]
        return None

    def on_batch(self, records: np.ndarray) -> None:
        # Decode now, while the process (and its code objects) still exist.
        has = np.flatnonzero(records["flags"] & F_HAS_PYSTACK)
        for i in has.tolist():
            self._python_stack(int(records["pid"][i]), int(records["aux"][i]))

    def on_rows(self, rows: np.ndarray) -> None:
        """Give rows with Python frames the hash of (native IPs, Python pairs); call after on_batch."""
        has = np.flatnonzero(rows["flags"] & F_HAS_PYSTACK)
        for i in has.tolist():
            py = self._py_frames.get((int(rows["pid"][i]), int(rows["aux"][i]) & MASK64))
            if py is None:
                continue
            native_hash = int(rows["stack_hash"][i])
            ips = self._unsymbolized[native_hash][1] if native_hash in self._unsymbolized else self.native.get(native_hash, ([], []))[0]
            pairs, pframes = py
            data = np.asarray(ips, "<u8").tobytes() + np.asarray([x for p in pairs for x in p], "<u8").tobytes()
            h = as_int64(fnv1a64(data))
            self.combined.setdefault(h, (ips, pframes, native_hash))
            rows["stack_hash"][i] = h

    def stack_rows(self) -> list[tuple[int, str, str]]:
        import json

        self._symbolize()
        out = []
        for h, (ips, frames) in self.native.items():
            out.append((h, json.dumps([f"{ip:#x}" for ip in ips]), json.dumps(frames)))
        for h, (ips, pframes, native_hash) in self.combined.items():
            out.append((h, json.dumps([f"{ip:#x}" for ip in ips]), json.dumps(pframes + self.native.get(native_hash, ([], []))[1])))
        return out

    def finish(self, probes: ProbeSet, writer: object) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        rows = self.stack_rows()
        if rows:
            writer.put_rows("stack_traces", ("hash", "ips", "frames"), rows, replace=True)
