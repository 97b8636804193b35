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
