"""What this kernel lets us do, found by loading, attaching and firing tiny programs.

`whyprobe check` prints this and `trace` decides with the same functions, so
diagnosis and behaviour cannot disagree (bcc trace_helpers.h probe_ringbuf,
fentry_can_attach).
"""

from __future__ import annotations

import errno
import os
import platform
import resource
import time
from functools import lru_cache
from pathlib import Path

from whyprobe.kernel.elfsym import resolve
from whyprobe.kernel.bpfobject import BpfObject, destroy_links
from whyprobe.kernel.libbpf import BpfError
from whyprobe.kernel.perf import perf_event_open_cpu_clock
from whyprobe.kernel.loader import bpf_object_path
from whyprobe.kernel.tracefs import TRACEFS, ensure_tracefs, tracefs_mounted

BTF = Path("/sys/kernel/btf/vmlinux")
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39

# capability -> (program, counter)
PROBES = {
    "tracepoint": ("probe_tracepoint", "hits_tracepoint"),
    "raw_tp": ("probe_raw_tp", "hits_raw_tp"),
    "tp_btf": ("probe_tp_btf", "hits_tp_btf"),
    "uprobe": ("probe_uprobe", "hits_uprobe"),
    "uprobe_multi": ("probe_uprobe_multi", "hits_uprobe_multi"),
    "uprobe_session": ("probe_uprobe_session", "hits_uprobe_session"),
    "kprobe": ("probe_kprobe", "hits_kprobe"),
    "fentry": ("probe_fentry", "hits_fentry"),
    "perf_event": ("probe_perf_event", "hits_perf_event"),
}
PERF_PROBE_PERIOD_NS = 1_000_000
PERF_PROBE_MAX_S = 0.5
REQUIRED = ("tracepoint", "uprobe")


def effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def privileged() -> bool:
    """The capabilities that load BPF programs and attach probes; uid 0 alone is not enough
    (root in a container or under capsh/setpriv with its capabilities dropped)."""
    caps = effective_caps()
    return bool(caps >> CAP_SYS_ADMIN & 1) or (bool(caps >> CAP_BPF & 1) and bool(caps >> CAP_PERFMON & 1))


def _libc_path() -> str:
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and "/libc.so" in parts[5]:
            return parts[5]
    raise FileNotFoundError("libc is not mapped")


def _try(cap: str, made: list[BpfObject]) -> tuple[bool, str]:
    """Load, attach and fire the probe of `cap`; its object goes into `made`, attached, for the caller to close."""
    prog, counter = PROBES[cap]
    try:
        obj = BpfObject(bpf_object_path("caps"))
        made.append(obj)
        for p in obj.program_names():
            obj.set_autoload(p, p == prog)
        if cap == "uprobe":
            obj.set_classic_uprobe(prog)
        elif cap == "uprobe_session":
            obj.set_session_uprobe(prog)
        obj.set_rodata(target_tgid=os.getpid())
        obj.load()
        if cap.startswith("uprobe"):
            libc = _libc_path()
            offsets, missing = resolve(libc, ["getppid"])
            if missing:
                return False, "getppid not found in libc"
            if cap == "uprobe":
                obj.attach_uprobe(prog, libc, offsets["getppid"], pid=os.getpid())
            else:  # one link, multi or session by how the program was loaded
                obj.attach_uprobe_multi(prog, libc, [offsets["getppid"]], [1], pid=os.getpid())
        elif cap == "perf_event":
            return _fire_perf_event(obj, prog, counter)
        else:
            obj.attach(prog)
        calls = 3
        for _ in range(calls):
            os.getppid()
        hits = int(obj.global_u64s(counter)[0])
        if hits == 0:
            return False, "attached but never fired"
        if cap == "uprobe_session" and hits != 2 * calls:
            return False, f"fired {hits}x for {calls} calls, not once at entry and once at return"
        return True, f"fired {hits}x"
    except BpfError as exc:
        if exc.errno == errno.EPERM and privileged():
            return False, f"refused by the kernel (EPERM) even with privileges, at {exc.step}"
        return False, str(exc).splitlines()[0]


def _fire_perf_event(obj: BpfObject, prog: str, counter: str) -> tuple[bool, str]:
    """Sample this process on the CPU clock every ms and spin until a sample lands (or give up)."""
    obj.attach_perf_event(prog, perf_event_open_cpu_clock(-1, PERF_PROBE_PERIOD_NS, pid=os.getpid()))
    deadline = time.monotonic() + PERF_PROBE_MAX_S
    while time.monotonic() < deadline:
        hits = int(obj.global_u64s(counter)[0])
        if hits:
            return True, f"fired {hits}x"
    return False, "attached but never fired"


@lru_cache(maxsize=1)
def probe_capabilities() -> dict[str, dict[str, object]]:
    """{capability: {"ok": bool, "detail": str}} for every program/attach type we use or might."""
    if not privileged():
        return {cap: {"ok": False, "detail": "not privileged (needs root or CAP_BPF+CAP_PERFMON)"} for cap in PROBES}
    try:
        ensure_tracefs()
    except OSError:
        pass
    out = {}
    made: list[BpfObject] = []
    try:
        for cap in PROBES:
            ok, detail = _try(cap, made)
            out[cap] = {"ok": ok, "detail": detail}
    finally:
        # Released together: each link's release waits out an RCU grace period, and those overlap.
        destroy_links([link for obj in made for link in obj.take_links()])
        for obj in made:
            obj.close()
    return out


def can(cap: str) -> bool:
    return bool(probe_capabilities().get(cap, {}).get("ok"))


def check_report() -> dict:
    """Kernel-side readiness: kernel, BTF, privileges, tracefs, memlock, and probed capabilities."""
    memlock = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    found_mounted = tracefs_mounted()
    caps = probe_capabilities()
    report = {
        "kernel": platform.release(),
        "arch": platform.machine(),
        "btf": BTF.exists(),
        "root": os.geteuid() == 0,
        "privileged": privileged(),
        # A fresh host may not have it: the probes above mount it, and the report says so.
        "tracefs": {"mounted": tracefs_mounted(), "mounted_by_whyprobe": tracefs_mounted() and not found_mounted, "path": str(TRACEFS)},
        "memlock": "unlimited" if memlock == resource.RLIM_INFINITY else memlock,
        "capabilities": caps,
    }
    problems = []
    if not report["btf"]:
        problems.append(f"no kernel BTF at {BTF}: CO-RE programs cannot load (needs CONFIG_DEBUG_INFO_BTF=y)")
    if not report["privileged"]:
        problems.append("not privileged: run as root (or with CAP_BPF + CAP_PERFMON)")
    for cap in REQUIRED:
        if not caps[cap]["ok"]:
            problems.append(f"{cap} programs do not work here: {caps[cap]['detail']}")
    report["problems"] = problems
    report["can_trace"] = not problems
    return report
