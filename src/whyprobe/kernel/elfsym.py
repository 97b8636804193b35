"""Symbol name -> file offset in an ELF file, the address form uprobes take.

Reads .symtab and .dynsym (static runtimes live as local symbols in the
executable) and maps st_value through the PT_LOAD segment that holds it.
The symbol tables are read raw into numpy arrays and only the names asked for
are searched: node's 180,000 symbols take pyelftools' object per symbol ~5 s,
this milliseconds. pyelftools parses the headers.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import BinaryIO, Iterable, Sequence

import numpy as np
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from whyprobe.errors import WhyprobeError


def _to_offset(segments: list[tuple[int, int, int]], vaddr: int) -> int | None:
    for seg_vaddr, seg_off, seg_size in segments:
        if seg_vaddr <= vaddr < seg_vaddr + seg_size:
            return vaddr - seg_vaddr + seg_off
    return None


# Elf{64,32}_Sym (elf.h); st_info's low nibble is the type: STT_FUNC 2, STT_GNU_IFUNC 10.
_SYM_FIELDS = {
    64: [("name", "u4"), ("info", "u1"), ("other", "u1"), ("shndx", "u2"), ("value", "u8"), ("size", "u8")],
    32: [("name", "u4"), ("value", "u4"), ("size", "u4"), ("info", "u1"), ("other", "u1"), ("shndx", "u2")],
}
_FUNC_TYPES = (2, 10)


def function_symbols(f: BinaryIO, elf: ELFFile, sections: Sequence[str]) -> list[tuple[np.ndarray, bytes]]:
    """Defined functions (STT_FUNC or STT_GNU_IFUNC, with an address) of each of the named symbol
    sections the file has, in that order: a structured array read raw from the file, and the
    section's string table. pyelftools' object per symbol costs seconds on big executables."""
    dtype = np.dtype(_SYM_FIELDS[elf.elfclass]).newbyteorder("<" if elf.little_endian else ">")
    out = []
    for secname in sections:
        sec = elf.get_section_by_name(secname)
        if sec is None or sec["sh_type"] == "SHT_NOBITS":
            continue
        strsec = elf.get_section(sec["sh_link"])
        f.seek(strsec["sh_offset"])
        strtab = f.read(strsec["sh_size"])
        f.seek(sec["sh_offset"])
        raw = f.read(sec["sh_size"])
        syms = np.frombuffer(raw, dtype, count=len(raw) // dtype.itemsize)
        out.append((syms[np.isin(syms["info"] & 0xF, _FUNC_TYPES) & (syms["shndx"] != 0) & (syms["value"] != 0)], strtab))
    return out


def _name_offsets(strtab: bytes, name: str) -> list[int]:
    """Every string-table offset where `name` starts (the linker shares tails: "SSL_read" may be
    the end of "XSSL_read")."""
    key = name.encode() + b"\0"
    out, i = [], strtab.find(key)
    while i >= 0:
        out.append(i)
        i = strtab.find(key, i + 1)
    return out


def c_string(strtab: bytes, offset: int) -> str:
    """The NUL-terminated name at `offset` of a string table."""
    end = strtab.find(b"\0", offset)
    return strtab[offset : end if end >= 0 else len(strtab)].decode("utf-8", "replace")


@lru_cache(maxsize=64)
def _tables(path: str, _mtime_ns: int) -> tuple[list[tuple[int, int, int]], list[tuple[np.ndarray, bytes]]]:
    """(PT_LOAD segments as (vaddr, offset, filesz), .symtab's then .dynsym's functions)."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            segments = [(s["p_vaddr"], s["p_offset"], s["p_filesz"]) for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            return segments, function_symbols(f, elf, (".symtab", ".dynsym"))
    except OSError as exc:
        raise WhyprobeError(f"Cannot read symbols of {path}: {exc}") from None
    except (ELFError, ValueError) as exc:
        raise WhyprobeError(f"Not a readable ELF file: {path} ({exc})") from None


def _read(path: str | os.PathLike) -> tuple[list[tuple[int, int, int]], list[tuple[np.ndarray, bytes]]]:
    p = os.fspath(path)
    try:
        mtime = os.stat(p).st_mtime_ns
    except OSError as exc:
        raise WhyprobeError(f"Cannot read symbols of {p}: {exc.strerror}") from None
    return _tables(os.path.realpath(p), mtime)


def lookup(path: str | os.PathLike, names: Iterable[str]) -> dict[str, int]:
    """Offsets of those of `names` the file defines as functions (.symtab's first, then .dynsym's)."""
    segments, tables = _read(path)
    out: dict[str, int] = {}
    for syms, strtab in tables:
        for n in names:
            starts = _name_offsets(strtab, n) if n not in out else []
            for i in np.flatnonzero(np.isin(syms["name"], starts)) if starts else ():
                off = _to_offset(segments, int(syms["value"][i]))
                if off is not None:
                    out[n] = off
                    break
    return out


def function_offsets(path: str | os.PathLike) -> dict[str, int]:
    """All functions the file defines, by name, as uprobe file offsets (.symtab's first)."""
    segments, tables = _read(path)
    out: dict[str, int] = {}
    for syms, strtab in tables:
        for name_at, value in zip(syms["name"].tolist(), syms["value"].tolist()):
            name = c_string(strtab, name_at)
            if name and name not in out and (off := _to_offset(segments, value)) is not None:
                out[name] = off
    return out


def resolve(path: str | os.PathLike, names: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """(found name -> offset, names missing) for the requested functions."""
    names = list(names)
    found = lookup(path, names)
    return found, [n for n in names if n not in found]
