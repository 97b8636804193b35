"""kernel/elfsym.lookup finds a few functions by name without building the whole symbol table, and
agrees with `resolve` (pyelftools) on real files: a library built here whose string table shares
tails between names, and the system's libssl/libcrypto."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from whyprobe.errors import WhyprobeError
from whyprobe.kernel.elfsym import lookup, resolve
from whyprobe.probes.libs import ldconfig_cache

SOURCE = """
int XSSL_read(void) { return 1; }
int SSL_read(void) { return 2; }
int SSL_write(void) { return 3; }
static int hidden_helper(void) { return 4; }
int call_hidden(void) { return hidden_helper(); }
int SSL_data = 5;
"""
NAMES = ("SSL_read", "XSSL_read", "SSL_write", "hidden_helper", "SSL_data", "SSL_free")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("elfsym")
    (d / "t.c").write_text(SOURCE)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O0", "-o", str(d / "libt.so"), str(d / "t.c")], check=True)
    return d / "libt.so"


def test_lookup_matches_resolve_on_a_built_library(built: Path) -> None:
    found = lookup(built, NAMES)
    assert found == resolve(built, NAMES)[0]
    # Functions only (not the data symbol, not a missing name); a static function from .symtab.
    assert sorted(found) == ["SSL_read", "SSL_write", "XSSL_read", "hidden_helper"]
    assert len(set(found.values())) == 4


@pytest.mark.parametrize("stem", ["libssl.so", "libcrypto.so"])
def test_lookup_matches_resolve_on_the_systems_openssl(stem: str) -> None:
    paths = sorted({p for soname, p in ldconfig_cache() if soname.startswith(stem)})
    assert paths, f"no {stem} in the ldconfig cache"
    names = ("SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex", "SSL_do_handshake", "SSL_set_bio", "SSL_free", "BIO_write")
    for p in paths:
        assert lookup(p, names) == resolve(p, names)[0]


def test_lookup_refuses_what_is_not_elf(tmp_path: Path) -> None:
    (tmp_path / "x.so").write_text("not an ELF file")
    with pytest.raises(WhyprobeError, match="Not a readable ELF file"):
        lookup(tmp_path / "x.so", NAMES)
    with pytest.raises(WhyprobeError, match="Cannot read symbols"):
        lookup(tmp_path / "missing.so", NAMES)
