"""Symbol name -> file offset in an ELF file, the address form uprobes take.

Reads .dynsym and .symtab (static runtimes live as local symbols in the
executable) and maps st_value through the PT_LOAD segment that holds it.
`lookup` finds a few names without building the whole table: node's 180,000
symbols take pyelftools ~5 s, a numpy scan of the raw table milliseconds.
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


@lru_cache(maxsize=64)
def _function_offsets(path: str, mtime_ns: int) -> dict[str, int]:
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            segments = [
                (s["p_vaddr"], s["p_offset"], s["p_filesz"]) for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"
            ]
            out: dict[str, int] = {}
            for secname in (".symtab", ".dynsym"):
                sec = elf.get_section_by_name(secname)
                if sec is None:
                    continue
                for sym in sec.iter_symbols():
                    if sym["st_info"]["type"] not in ("STT_FUNC", "STT_GNU_IFUNC") or not sym["st_value"]:
                        continue
                    if sym["st_shndx"] == "SHN_UNDEF":
                        continue
                    off = _to_offset(segments, sym["st_value"])
                    if off is not None:
                        # .dynsym names may carry @VERSION in other tools; pyelftools gives bare names.
                        out.setdefault(sym.name, off)
            return out
    except (OSError, ValueError) as exc:
        raise WhyprobeError(f"Cannot read symbols of {path}: {exc}") from None
    except ELFError as exc:
        raise WhyprobeError(f"Not a readable ELF file: {path} ({exc})") from None


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


@lru_cache(maxsize=512)
def _lookup(path: str, mtime_ns: int, names: tuple[str, ...]) -> dict[str, int]:
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            segments = [
                (s["p_vaddr"], s["p_offset"], s["p_filesz"]) for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"
            ]
            out: dict[str, int] = {}
            for syms, strtab in function_symbols(f, elf, (".symtab", ".dynsym")):
                for n in names:
                    starts = _name_offsets(strtab, n) if n not in out else []
                    hit = np.flatnonzero(np.isin(syms["name"], starts)) if starts else ()
                    for i in hit:
                        off = _to_offset(segments, int(syms["value"][i]))
                        if off is not None:
                            out[n] = off
                            break
            return out
    except OSError as exc:
        raise WhyprobeError(f"Cannot read symbols of {path}: {exc}") from None
    except ELFError as exc:
        raise WhyprobeError(f"Not a readable ELF file: {path} ({exc})") from None


def lookup(path: str | os.PathLike, names: Iterable[str]) -> dict[str, int]:
    """Offsets of those of `names` the file defines as functions (same answer as `resolve`, fast on
    big executables)."""
    p = os.fspath(path)
    try:
        mtime = os.stat(p).st_mtime_ns
    except OSError as exc:
        raise WhyprobeError(f"Cannot read symbols of {p}: {exc.strerror}") from None
    return dict(_lookup(os.path.realpath(p), mtime, tuple(names)))


def function_offsets(path: str | os.PathLike) -> dict[str, int]:
    """All defined function symbols of an ELF file, as uprobe file offsets."""
    p = os.fspath(path)
    return _function_offsets(os.path.realpath(p), os.stat(p).st_mtime_ns)


def resolve(path: str | os.PathLike, names: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """(found name -> offset, names missing) for the requested functions."""
    table = function_offsets(path)
    found, missing = {}, []
    for n in names:
        if n in table:
            found[n] = table[n]
        else:
            missing.append(n)
    return found, missing
