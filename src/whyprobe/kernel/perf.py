"""perf_event_open(2) for CPU-clock sampling, and the kernel's own count of a BPF program's run time.

Raw syscalls (glibc has no wrappers); the libbpf side (attach, program info)
is declared in kernel/libbpf.py.
"""

from __future__ import annotations

import ctypes as ct
import errno as errno_mod

import numpy as np

from whyprobe.kernel.libbpf import SYS_BPF, BpfError, bpf_obj_get_info_by_fd

SYS_PERF_EVENT_OPEN = 298  # x86_64
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_ATTR_SIZE_VER5 = 112
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
PROG_INFO_SIZE = 232  # sizeof(struct bpf_prog_info), uapi linux/bpf.h (kernel 6.x)
PROG_INFO_RUN_TIME_NS = 192  # offsetof(struct bpf_prog_info, run_time_ns); run_cnt follows

_libc = ct.CDLL(None, use_errno=True)
_libc.syscall.restype = ct.c_long


def _errno() -> int:
    return ct.get_errno() or errno_mod.EINVAL


class _PerfEventAttr(ct.Structure):
    # struct perf_event_attr up to sample_max_stack (PERF_ATTR_SIZE_VER5, include/uapi/linux/perf_event.h);
    # `bits` holds the bitfield word (disabled, inherit, ..., freq = bit 10).
    _fields_ = [
        ("type", ct.c_uint32),
        ("size", ct.c_uint32),
        ("config", ct.c_uint64),
        ("sample_period", ct.c_uint64),
        ("sample_type", ct.c_uint64),
        ("read_format", ct.c_uint64),
        ("bits", ct.c_uint64),
        ("wakeup_events", ct.c_uint32),
        ("bp_type", ct.c_uint32),
        ("config1", ct.c_uint64),
        ("config2", ct.c_uint64),
        ("branch_sample_type", ct.c_uint64),
        ("sample_regs_user", ct.c_uint64),
        ("sample_stack_user", ct.c_uint32),
        ("clockid", ct.c_int32),
        ("sample_regs_intr", ct.c_uint64),
        ("aux_watermark", ct.c_uint32),
        ("sample_max_stack", ct.c_uint16),
        ("_reserved_2", ct.c_uint16),
    ]


assert ct.sizeof(_PerfEventAttr) == PERF_ATTR_SIZE_VER5


def perf_event_open_cpu_clock(cpu: int, period_ns: int, *, pid: int = -1) -> int:
    """A CPU-clock sampling event firing every `period_ns`; its fd. pid -1 and a CPU: every task on
    that CPU; a pid and cpu -1: that process wherever it runs."""
    attr = _PerfEventAttr(type=PERF_TYPE_SOFTWARE, size=ct.sizeof(_PerfEventAttr), config=PERF_COUNT_SW_CPU_CLOCK, sample_period=period_ns)
    fd = _libc.syscall(SYS_PERF_EVENT_OPEN, ct.byref(attr), pid, cpu, -1, PERF_FLAG_FD_CLOEXEC)
    if fd < 0:
        raise BpfError("perf_event_open cpu-clock", f"cpu {cpu}" if pid < 0 else f"pid {pid}", _errno())
    return fd


def enable_run_time_stats() -> int:
    """Have the kernel count every program's run time and runs while the returned fd is open
    (BPF_ENABLE_STATS: scoped to the fd, unlike the kernel.bpf_stats_enabled sysctl)."""
    attr = ct.c_uint32(BPF_STATS_RUN_TIME)
    fd = _libc.syscall(SYS_BPF, BPF_ENABLE_STATS, ct.byref(attr), ct.sizeof(attr))
    if fd < 0:
        raise BpfError("enable run-time stats", "BPF_ENABLE_STATS", _errno())
    return fd


def prog_run_stats(prog_fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a loaded program, counted while run-time stats are enabled."""
    buf = ct.create_string_buffer(PROG_INFO_SIZE)
    size = ct.c_uint32(PROG_INFO_SIZE)
    rc = bpf_obj_get_info_by_fd(prog_fd, buf, ct.byref(size))
    if rc < 0:
        raise BpfError("get info of program fd", str(prog_fd), -rc)
    run_ns, runs = np.frombuffer(buf.raw, "<u8", 2, PROG_INFO_RUN_TIME_NS)
    return int(run_ns), int(runs)
