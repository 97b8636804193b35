"""kernel/elfsym reads symbol tables as raw arrays; its answers (`lookup` of a few names, and
`function_offsets`, the whole table) agree with pyelftools read symbol by symbol, on real files: a
library built here whose string table shares tails between names, the system's libssl/libcrypto,
libc and the CUDA runtime wheel."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from whyprobe.errors import WhyprobeError
from elftools.elf.elffile import ELFFile

from whyprobe.kernel.elfsym import function_offsets, lookup
from whyprobe.probes.libs import ldconfig_cache

SOURCE = """
int XSSL_read(void) { return 1; }
int SSL_read(void) { return 2; }
int SSL_write(void) { return 3; }
static int hidden_helper(void) { return 4; }
int call_hidden(void) { return hidden_helper(); }
int SSL_data = 5;
"""
REAL_CUDART = next(Path(sys.prefix).glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12"))
NAMES = ("SSL_read", "XSSL_read", "SSL_write", "hidden_helper", "SSL_data", "SSL_free")


def _reference(path: Path | str) -> dict[str, int]:
    """pyelftools' answer, symbol by symbol: .symtab's functions first, then .dynsym's, as file offsets."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        segments = [(s["p_vaddr"], s["p_offset"], s["p_filesz"]) for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        out: dict[str, int] = {}
        for secname in (".symtab", ".dynsym"):
            sec = elf.get_section_by_name(secname)
            for sym in sec.iter_symbols() if sec is not None else ():
                value = sym["st_value"]
                if sym["st_info"]["type"] not in ("STT_FUNC", "STT_LOOS") or not value or sym["st_shndx"] == "SHN_UNDEF" or not sym.name:
                    continue
                for vaddr, off, size in segments:
                    if vaddr <= value < vaddr + size:
                        out.setdefault(sym.name, value - vaddr + off)
                        break
        return out


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("elfsym")
    (d / "t.c").write_text(SOURCE)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O0", "-o", str(d / "libt.so"), str(d / "t.c")], check=True)
    return d / "libt.so"


def test_lookup_matches_resolve_on_a_built_library(built: Path) -> None:
    found = lookup(built, NAMES)
    assert found == {n: off for n, off in _reference(built).items() if n in NAMES}
    # Functions only (not the data symbol, not a missing name); a static function from .symtab.
    assert sorted(found) == ["SSL_read", "SSL_write", "XSSL_read", "hidden_helper"]
    assert len(set(found.values())) == 4


@pytest.mark.parametrize("stem", ["libssl.so", "libcrypto.so"])
def test_lookup_matches_resolve_on_the_systems_openssl(stem: str) -> None:
    paths = sorted({p for soname, p in ldconfig_cache() if soname.startswith(stem)})
    assert paths, f"no {stem} in the ldconfig cache"
    names = ("SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex", "SSL_do_handshake", "SSL_set_bio", "SSL_free", "BIO_write")
    for p in paths:
        assert lookup(p, names) == {n: off for n, off in _reference(p).items() if n in names}


@pytest.mark.parametrize("which", ["libc", "cudart", "built"])
def test_the_whole_table_matches_pyelftools(which: str, built: Path) -> None:
    # GIVEN libc (GNU indirect functions, version aliases), the CUDA runtime wheel and the built library
    libc = next(p for p in Path("/proc/self/maps").read_text().split() if "/libc.so" in p)
    path = {"libc": libc, "cudart": REAL_CUDART, "built": built}[which]
    # THEN every function and its offset are pyelftools' own
    table = function_offsets(path)
    assert len(table) > (3 if which == "built" else 400)
    assert table == _reference(path)


def test_lookup_refuses_what_is_not_elf(tmp_path: Path) -> None:
    (tmp_path / "x.so").write_text("not an ELF file")
    with pytest.raises(WhyprobeError, match="Not a readable ELF file"):
        lookup(tmp_path / "x.so", NAMES)
    with pytest.raises(WhyprobeError, match="Cannot read symbols"):
        lookup(tmp_path / "missing.so", NAMES)
