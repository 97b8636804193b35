"""The `sessions` facts that describe this host and this invocation."""

from __future__ import annotations

import os
import platform
import shlex
import socket
import sys
import time
from typing import Any

import psutil

from whyprobe import __version__, clock

def _os_release() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _mem_total_mib() -> int:
    try:
        return int(psutil.virtual_memory().total // 2**20)
    except OSError:  # /proc/meminfo unreadable (a sandbox): the fact is optional
        return 0


def host_facts() -> dict[str, Any]:
    """The `sessions` columns that describe this host and this invocation.

    A trace passes the clock offset it applies to its events in `session`; this
    one is for files written without a trace (imports, tests).
    """
    hostname = socket.gethostname()
    return {
        "started_at": time.time_ns(),
        "hostname": hostname,
        "node": hostname,
        "kernel": platform.release(),
        "os_release": _os_release(),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count() or 0,
        "mem_total": _mem_total_mib(),
        "python_ver": platform.python_version(),
        "whyprobe_ver": __version__,
        "argv": shlex.join(sys.argv),
        "clock_offset_ns": clock.measure_offset_ns(),
    }
