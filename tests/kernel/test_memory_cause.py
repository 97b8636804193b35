"""Memory as a cause: a traced workload in a memory cgroup whose limit is far below what its slow copies
read, so the kernel reclaims inside those calls; explain names `memory`, with the reclaim stalls counted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cuda_helpers import trace_released
from whyprobe.analyze.explain import explain
from whyprobe.demo.build import build_workloads
from whyprobe.events import F_FAULT_WAIT, F_PREEMPTED
from whyprobe.probes.cuda import CudaFamily
from whyprobe.probes.host import BlockFamily, MemFamily, SchedFamily
from whyprobe.store.reader import open_trace
from whyprobe.units import fmt_ns

pytestmark = pytest.mark.usefixtures("bpf_required")

LIMIT, BIG, STEPS, SMALL = 32 << 20, 96 << 20, 5, 30
MEMCG_RECLAIM = 21

WORKLOAD = r"""
import ctypes, os, sys
lib = ctypes.CDLL(sys.argv[1])
path, big, steps, small = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
lib.standin_set_memcpy_file(path.encode())
lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
print("ready", flush=True)
sys.stdin.readline()
fd = os.open(path, os.O_RDONLY)
for step in range(steps):
    for _ in range(small):
        assert lib.cudaMemcpy(None, None, 4096, 1) == 0
    # Outside any CUDA call: the next big copy reads from disk again and charges new page cache.
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    assert lib.cudaMemcpy(None, None, big, 1) == 0
print("done", flush=True)
"""


def _memory_cgroup(name: str) -> tuple[Path, str]:
    """(cgroup dir, limit file): cgroup v2 with memory.high where the memory controller is on v2, else v1's limit."""
    for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        controllers = root / "cgroup.controllers"
        if controllers.exists() and "memory" in controllers.read_text().split():
            (root / "cgroup.subtree_control").write_text("+memory")
            return root / name, "memory.high"
    v1 = Path("/sys/fs/cgroup/memory")
    if (v1 / "memory.limit_in_bytes").exists():
        return v1 / name, "memory.limit_in_bytes"
    pytest.fail("no memory cgroup controller (v2 or v1) on this host")


@pytest.fixture
def memcg():
    group, limit_file = _memory_cgroup(f"whyprobe-test-{os.getpid()}")
    group.mkdir()
    try:
        (group / limit_file).write_text(str(LIMIT))
        yield group
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                pass


@pytest.fixture
def big_file():
    # On the root filesystem, not tmpfs: page cache there is reclaimable without swap.
    path = Path("/var/tmp") / f"whyprobe-memtest-{os.getpid()}.bin"
    with open(path, "wb") as f:
        for _ in range(BIG >> 20):
            f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    try:
        yield path
    finally:
        path.unlink()


def test_reclaim_inside_slow_copies_is_a_memory_cause(tmp_path: Path, memcg: Path, big_file: Path) -> None:
    cudart = build_workloads().cudart
    procs = memcg / "cgroup.procs"
    # GIVEN a workload that starts inside a memory cgroup limited to 32 MiB and copies a 96 MiB file
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKLOAD, str(cudart), str(big_file), str(BIG), str(STEPS), str(SMALL)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        preexec_fn=lambda: procs.write_text(str(os.getpid())),
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        db = tmp_path / "t.db"
        families = [CudaFamily([str(cudart)]), SchedFamily(), BlockFamily(), MemFamily()]
        trace_released(db, families, proc)
        assert proc.wait() == 0 and proc.stdout.read() == "done\n"
    finally:
        if proc.poll() is None:
            proc.kill()

    with open_trace(db) as t:
        doc = explain(t)
        f = next(f for f in doc["findings"] if f["kind"] == "tail" and f["op"] == "cudaMemcpy")
        tid = f["tid"]
        # Reclaim stalls the kernel ran on the workload's thread inside its slow copies, counted in SQL.
        inside = t.conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT c.id) FROM events r JOIN events c ON c.tid = r.tid "
            "AND r.timestamp >= c.timestamp AND r.timestamp < c.timestamp + c.duration "
            "WHERE r.source = 3 AND r.op = ? AND r.tid = ? AND c.source = 1 AND c.op = 4 AND c.duration > ?",
            (MEMCG_RECLAIM, tid, f["threshold_ns"]),
        ).fetchone()
        big_calls = t.conn.execute("SELECT COUNT(*) FROM events WHERE source = 1 AND op = 4 AND arg0 = ?", (BIG,)).fetchone()[0]
    # THEN every big copy reclaimed (the setup worked), and explain blames memory for exactly those stalls
    assert big_calls == STEPS
    reclaims, calls_with_reclaim = inside
    assert calls_with_reclaim >= STEPS
    memory = next(c for c in f["causes"] if c["kind"] == "memory")
    assert memory["explained_ns"] > 0
    assert memory["slow_calls"] == calls_with_reclaim
    assert memory["stalls"]["memcg_reclaim"] == reclaims
    assert f"memory {fmt_ns(memory['explained_ns'])}" in f["summary"]


FAULTER = r"""
import mmap, os, sys, time
print("ready", flush=True)
sys.stdin.readline()
for _ in range(3):
    time.sleep(0.03)  # blocked inside a syscall
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
m.madvise(mmap.MADV_RANDOM)  # no readahead: every touch below is a major fault
total = sum(m[off] for off in range(0, len(m), 1 << 20))
print("done", total >= 0, flush=True)
"""


def test_blocked_in_a_page_fault_is_flagged_and_a_syscall_wait_is_not(tmp_path: Path, big_file: Path) -> None:
    # GIVEN a traced process that sleeps in nanosleep, then takes major faults on an evicted file mapping
    proc = subprocess.Popen([sys.executable, "-c", FAULTER, str(big_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    db = tmp_path / "t.db"
    trace_released(db, [SchedFamily()], proc)
    assert proc.wait() == 0 and proc.stdout.read() == "done True\n"
    with open_trace(db) as t:
        rows = t.conn.execute("SELECT duration, flags FROM events WHERE source = 3 AND op = 1 AND tid = ?", (proc.pid,)).fetchall()
    blocked = [(d, fl) for d, fl in rows if not fl & F_PREEMPTED]
    # THEN the three sleeps are blocked intervals without the flag, and the fault waits carry it
    sleeps = [fl for d, fl in blocked if d >= 25_000_000]
    assert len(sleeps) == 3 and not any(fl & F_FAULT_WAIT for fl in sleeps)
    assert sum(1 for _, fl in blocked if fl & F_FAULT_WAIT) >= 1
