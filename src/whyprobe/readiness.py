"""The full `check` report: kernel capabilities plus CUDA libraries and GPUs on this host."""

from __future__ import annotations

import glob
from pathlib import Path

from whyprobe.kernel.caps import check_report
from whyprobe.probes.cuda import discovery_report


def gpu_facts() -> dict:
    version = Path("/proc/driver/nvidia/version")
    driver = version.read_text().splitlines()[0].strip() if version.exists() else ""
    devices = sorted(p for p in glob.glob("/dev/nvidia[0-9]*"))
    return {"driver": driver, "devices": devices}


def readiness_report() -> dict:
    kernel = check_report()
    return {
        "kernel": kernel,
        "cuda": discovery_report(),
        "gpu": gpu_facts(),
        "problems": kernel["problems"],
        "can_trace": kernel["can_trace"],
    }
