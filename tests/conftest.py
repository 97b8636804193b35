"""Shared fixtures. Kernel tests skip on machines that cannot trace, except in CI
(WHYPROBE_REQUIRE_BPF=1), where a skip is a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _bpf_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "kernel has no BTF"
    if not list((ROOT / "src/whyprobe/bpf").glob("*.bpf.o")):
        return "BPF objects not built (run make bpf)"
    return None


@pytest.fixture
def bpf_required() -> None:
    reason = _bpf_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("WHYPROBE_REQUIRE_BPF") == "1":
        pytest.fail(f"kernel test cannot run ({reason}) but WHYPROBE_REQUIRE_BPF=1")
    pytest.skip(reason)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def as_nobody():
    """Wrap an argv to run as user nobody (when we are root).

    The checkout may sit under a root-only directory (CI clones into a private
    temp dir), where nobody could not import the package: give "others" search
    permission on the ancestors that lack it, for this session only."""
    import shutil
    import stat

    if os.geteuid() != 0:
        yield lambda argv: list(argv)
        return
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) missing")
    changed = []
    for d in [ROOT, *ROOT.parents]:
        mode = d.stat().st_mode
        if not mode & stat.S_IXOTH:
            d.chmod(mode | stat.S_IXOTH)
            changed.append((d, mode))
    try:
        yield lambda argv: [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", *argv]
    finally:
        for d, mode in changed:
            d.chmod(stat.S_IMODE(mode))
