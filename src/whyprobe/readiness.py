"""The full `check` report: kernel capabilities plus CUDA libraries and GPUs on this host."""

from __future__ import annotations

import glob
from pathlib import Path

from whyprobe.kernel.caps import check_report


def gpu_facts() -> dict:
    version = Path("/proc/driver/nvidia/version")
    driver = version.read_text().splitlines()[0].strip() if version.exists() else ""
    devices = sorted(p for p in glob.glob("/dev/nvidia[0-9]*"))
    return {"driver": driver, "devices": devices}


def readiness_report() -> dict:
    kernel = check_report()
    try:
        from whyprobe.probes.cuda import discovery_report

        cuda = discovery_report()
    except ImportError:
        cuda = {"libraries": [], "searched": []}
    return {
        "kernel": kernel,
        "cuda": cuda,
        "gpu": gpu_facts(),
        "problems": kernel["problems"],
        "can_trace": kernel["can_trace"],
    }
