"""Symbol name -> file offset in an ELF file, the address form uprobes take.

Reads .dynsym and .symtab (static runtimes live as local symbols in the
executable) and maps st_value through the PT_LOAD segment that holds it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Iterable

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
