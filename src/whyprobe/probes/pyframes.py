"""CPython frames (3.10-3.13): where a process's interpreter keeps its state, and (code, instruction) pairs to names and lines.

The BPF walk (bpf/pystacks.bpf.h) records (code object, instruction) pairs;
this module finds each target's interpreter (version, `_PyRuntime`), gives
the kernel its offsets (`PyTarget.config()` is a struct py_proc) and decodes
the pairs: names and line tables are read from the live process, or, once it
has exited, from the copy the kernel kept in `py_codes` on first sight.
Offsets and line-table formats: FACTS-cuda-cpython.md Part 2.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

log = logging.getLogger(__name__)

PY_PROC = struct.Struct("<Q18I")  # struct py_proc in bpf/pystacks.bpf.h
PY_CODE_KEY = struct.Struct("<QII")  # struct py_code_key
PY_CODE_HEAD = struct.Struct("<iIHHI")  # struct py_code: firstlineno, linetable_len, name_len, file_len, pad
PY_NAME_LEN, PY_FILE_LEN, PY_LINETABLE_LEN = 64, 192, 512
PY_CODE_SIZE = PY_CODE_HEAD.size + PY_NAME_LEN + PY_FILE_LEN + PY_LINETABLE_LEN


def read_maps(pid: int) -> list["Mapping"]:
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


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    offset: int
    path: str


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
            lay.co_filename, lay.co_qualname or lay.co_name, lay.co_firstlineno, lay.co_linetable, lay.str_ascii, 0,
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


def image_signature(pid: int) -> tuple[str, str]:
    """(start of the text segment, virtual size) from /proc/PID/stat (fields 26 and 23):
    the first changes when the process execs, the second when it maps or unmaps memory."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[23], fields[20]
    except (OSError, IndexError):
        return "", ""


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
    # The table is read from a live process: if its code object was freed meanwhile the bytes can
    # end inside an entry, and the line is then unknown rather than an IndexError in the tracer.
    try:
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
    except IndexError:
        return None
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


def code_from_bpf(raw: bytes, code: int, lay: PyLayout) -> CodeInfo | None:
    """A struct py_code the kernel copied at first sight of `code` (bpf/pystacks.bpf.h)."""
    firstlineno, lt_len, name_len, file_len, _ = PY_CODE_HEAD.unpack_from(raw)
    if not name_len:
        return None
    base = PY_CODE_HEAD.size
    name = raw[base : base + min(name_len, PY_NAME_LEN)].decode("ascii", "replace")
    file = raw[base + PY_NAME_LEN : base + PY_NAME_LEN + min(file_len, PY_FILE_LEN)].decode("ascii", "replace")
    lt_at = base + PY_NAME_LEN + PY_FILE_LEN
    linetable = raw[lt_at : lt_at + min(lt_len, PY_LINETABLE_LEN)]
    return CodeInfo(file, name, firstlineno, linetable, code + lay.co_code if lay.version >= 311 else 0)


class PythonFrames:
    """Decodes (code, instruction) pairs of one process, caching code objects.

    `kept(code)` returns the kernel's copy of a code object (py_codes), used when
    the process can no longer be read."""

    def __init__(self, target: PyTarget, kept: Callable[[int], bytes | None] | None = None) -> None:
        self.target = target
        self.kept = kept
        self._codes: dict[int, CodeInfo | None] = {}

    def frame(self, code: int, instr: int) -> dict | None:
        if self._codes.get(code) is None:
            info = read_code(self.target.pid, self.target.layout, code)
            if info is None and self.kept is not None:
                raw = self.kept(code)
                info = code_from_bpf(raw, code, self.target.layout) if raw else None
            self._codes[code] = info
        info = self._codes[code]
        if info is None:
            return None
        if self.target.version == 310:
            addr = 2 * instr
        else:
            addr = instr - info.code_start
        line = line_for(self.target.version, info.linetable, info.firstlineno, addr) if addr >= 0 else None
        return {"s": info.qualname, "f": info.filename, "l": line or info.firstlineno, "py": True}


