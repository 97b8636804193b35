"""Config-defined probes on a real kernel: uprobes on a C library built here (entry, return, both,
recursion, pid filter, soname found in a target's maps), tracepoints with filters evaluated in the
kernel (exact counts), one-line errors for bad entries, and `whyprobe trace --config` end to end."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from whyprobe.commands import main
from whyprobe.config import TracepointSpec, UprobeSpec
from whyprobe.errors import ConfigError
from whyprobe.probes import families
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.custom import CustomFamily
from whyprobe.events import Source
from whyprobe.record.session import TraceOptions, TraceSession
from whyprobe.store.reader import open_trace

LIB_C = r"""
volatile int rec_sink;
int add3(int a, int b, int c) { return a + b + c; }
/* noinline: gcc would otherwise unroll the recursion into one frame */
__attribute__((noinline)) int rec(int n) { if (n <= 0) return 0; int r = rec(n - 1) + 1; rec_sink = r; return r; }
"""

# drv N DEPTH [wait]: with `wait`, print "ready" and wait for a line first; then add3(i, 2i, 3i)
# for i < N, then rec(DEPTH), then print the sum.
DRIVER_C = r"""
#include <stdio.h>
#include <stdlib.h>
int add3(int, int, int);
int rec(int);
int main(int argc, char **argv) {
    char line[16];
    long sum = 0;
    int n = atoi(argv[1]), depth = atoi(argv[2]);
    if (argc > 3) {
        printf("ready\n");
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin))
            return 2;
    }
    for (int i = 0; i < n; i++)
        sum += add3(i, 2 * i, 3 * i);
    sum += rec(depth);
    printf("%ld\n", sum);
    return 0;
}
"""

N = 200
NR_GETPPID = 110


@pytest.fixture(scope="module")
def workload(tmp_path_factory) -> tuple[Path, Path]:
    """(libcustomtest.so, driver linked against it with an RPATH to its directory)."""
    d = tmp_path_factory.mktemp("custom")
    (d / "lib.c").write_text(LIB_C)
    (d / "drv.c").write_text(DRIVER_C)
    lib = d / "libcustomtest.so"
    subprocess.run(["gcc", "-O2", "-fno-omit-frame-pointer", "-shared", "-fPIC", "-o", str(lib), str(d / "lib.c")], check=True)
    drv = d / "custom_driver"
    subprocess.run(["gcc", "-O2", "-o", str(drv), str(d / "drv.c"), f"-L{d}", "-lcustomtest", f"-Wl,-rpath,{d}"], check=True)
    return lib, drv


def _run_traced(tmp_path: Path, family: CustomFamily, argv: list[str], *, untraced: list[str] | None = None):
    """Start `argv` (it prints "ready" and waits), trace it with `family`, release it, stop at its exit."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    other = subprocess.Popen(untraced, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) if untraced else None
    if other is not None:
        assert other.stdout.readline() == "ready\n"
    session = TraceSession(tmp_path / "t.db", [family], TargetSpec(pids=[proc.pid]), TraceOptions(snapshots=False))
    session.start()
    if other is not None:
        other.communicate("go\n")
    out, _ = proc.communicate("go\n")
    session.run(lambda: True)
    summary = session.stop()
    assert proc.returncode == 0 and summary.dropped == 0
    db = open_trace(tmp_path / "t.db")
    try:
        return proc.pid, out, db.load_events("source = ?", (int(Source.CUSTOM),)), db.op_names()
    finally:
        db.close()


def test_both_records_each_call_with_args_duration_and_return_value(bpf_required, tmp_path, workload):
    # GIVEN add3 and the recursive rec probed with attach: both, in one library (one link per direction)
    lib, drv = workload
    fam = CustomFamily([UprobeSpec(library=str(lib), symbol="add3", attach="both"), UprobeSpec(library=str(lib), symbol="rec", attach="both")])
    # WHEN the driver makes N add3 calls and rec(10) nests 11 frames, while an untraced copy does the same
    pid, out, ev, names = _run_traced(tmp_path, fam, [str(drv), str(N), "10", "wait"], untraced=[str(drv), str(N), "10", "wait"])
    assert int(out) == sum(6 * i for i in range(N)) + 10
    # THEN exactly the traced process's N add3 calls, in order, with their arguments and results
    assert set(ev["pid"].tolist()) == {pid}
    add3 = ev[ev["op"] == 0]
    i = list(range(N))
    assert len(add3) == N
    assert add3["arg0"].tolist() == i and add3["arg1"].tolist() == [2 * x for x in i] and add3["arg2"].tolist() == [3 * x for x in i]
    assert add3["ret_code"].tolist() == [6 * x for x in i]
    assert (add3["duration"] > 0).all()
    # AND every rec frame up to the nesting limit of 8, each paired with its own return value
    rec = ev[ev["op"] == 1]
    assert sorted(zip(rec["arg0"].tolist(), rec["ret_code"].tolist())) == [(n, n) for n in range(3, 11)]
    # AND each frame lies inside its caller: later start, shorter duration
    nested = rec[np.argsort(-rec["arg0"])]
    assert (np.diff(nested["timestamp"]) > 0).all() and (np.diff(nested["duration"]) < 0).all()
    # AND the ops table names them
    assert names[(9, 0)] == "libcustomtest.so:add3" and names[(9, 1)] == "libcustomtest.so:rec"


def test_entry_and_return_modes_record_one_side_each(bpf_required, tmp_path, workload):
    # GIVEN add3 probed twice: at entry only (op 0) and at return only (op 1)
    lib, drv = workload
    fam = CustomFamily([UprobeSpec(library=str(lib), symbol="add3", attach="entry"), UprobeSpec(library=str(lib), symbol="add3", attach="return")])
    _, _, ev, _ = _run_traced(tmp_path, fam, [str(drv), str(N), "0", "wait"])
    entry, ret = ev[ev["op"] == 0], ev[ev["op"] == 1]
    # THEN N entry events carrying the arguments and no duration or result
    assert len(entry) == N
    assert entry["arg1"].tolist() == [2 * x for x in range(N)]
    assert (entry["duration"] == 0).all() and (entry["ret_code"] == 0).all()
    # AND N return events carrying the results and no arguments
    assert len(ret) == N
    assert ret["ret_code"].tolist() == [6 * x for x in range(N)]
    assert (ret["arg0"] == 0).all() and (ret["duration"] == 0).all()


def test_soname_is_found_in_the_targets_maps(bpf_required, tmp_path, workload, monkeypatch):
    # GIVEN the library named by soname only, reachable through no search path but the driver's RPATH
    lib, drv = workload
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    fam = CustomFamily([UprobeSpec(library="libcustomtest.so", symbol="add3", attach="both")])
    assert fam.uprobes[0].path is None
    # WHEN traced: the running driver maps it
    _, _, ev, _ = _run_traced(tmp_path, fam, [str(drv), "7", "0", "wait"])
    # THEN the copy it maps was attached
    assert fam.uprobes[0].path == str(lib) and len(ev) == 7


def test_unknown_library_by_soname_fails_at_attach_naming_the_entry(bpf_required, tmp_path):
    fam = CustomFamily([UprobeSpec(library="libnosuchthing.so", symbol="f")])
    session = TraceSession(tmp_path / "t.db", [fam], TargetSpec(pids=[os.getpid()]), TraceOptions(snapshots=False))
    with pytest.raises(ConfigError, match=r"^probes\.uprobes\[0\]: library libnosuchthing\.so not found \(searched: /proc/\d+/maps, .*ldconfig -p.*\); give its path$"):
        session.start()


def test_missing_symbol_or_file_is_one_line_naming_the_entry(workload):
    lib, _ = workload
    ok = UprobeSpec(library=str(lib), symbol="add3")
    with pytest.raises(ConfigError) as exc:
        CustomFamily([ok, UprobeSpec(library=str(lib), symbol="nosuch")])
    assert str(exc.value) == f"probes.uprobes[1]: symbol nosuch not found in {lib}"
    with pytest.raises(ConfigError) as exc:
        CustomFamily([UprobeSpec(library="/nonexistent/libx.so", symbol="f")])
    assert str(exc.value) == "probes.uprobes[0]: library /nonexistent/libx.so does not exist"


_GETPPID_CHILD = """
import os, sys
print("ready", flush=True)
sys.stdin.readline()
for _ in range(int(sys.argv[1])):
    os.getppid()
fd = os.open("/dev/zero", os.O_RDONLY)
for n in (7, 7, 7, 13, 8, 8):
    os.read(fd, n)
print(fd)
"""


def test_tracepoint_filters_are_evaluated_in_the_kernel(bpf_required, tmp_path):
    # GIVEN getppid entry with a passing, a rejecting and a signed-comparison filter, and read
    # entry filtered on two fields (an OR of ANDs)
    tps = [
        TracepointSpec(name="syscalls:sys_enter_getppid", filter=f"__syscall_nr == {NR_GETPPID}"),
        TracepointSpec(name="syscalls:sys_enter_getppid", filter=f"__syscall_nr != {NR_GETPPID}"),
        TracepointSpec(name="syscalls:sys_enter_getppid", filter="__syscall_nr > -5 && __syscall_nr < 111"),
        TracepointSpec(name="syscalls:sys_enter_read", filter="count == 7 && fd > 2 || count == 13 && fd > 2"),
        TracepointSpec(name="syscalls:sys_enter_getppid"),
    ]
    fam = CustomFamily(tracepoints=tps)
    # WHEN the child calls getppid N times, then reads /dev/zero 7, 7, 7, 13, 8, 8 bytes
    pid, out, ev, names = _run_traced(tmp_path, fam, [sys.executable, "-c", _GETPPID_CHILD, str(N)])
    fd = int(out.split()[-1])
    counts = {op: int((ev["op"] == op).sum()) for op in range(1000, 1005)}
    # THEN exactly the calls each filter admits
    assert counts == {1000: N, 1001: 0, 1002: N, 1003: 4, 1004: N}
    reads = ev[ev["op"] == 1003]
    # AND a read records its fields as arguments: fd, buf, count
    assert reads["arg0"].tolist() == [fd] * 4 and reads["arg2"].tolist() == [7, 7, 7, 13]
    assert (reads["arg1"] != 0).all() and (reads["pid"] == pid).all()
    assert names[(9, 1003)] == "syscalls:sys_enter_read"
    conn = sqlite3.connect(tmp_path / "t.db")
    (desc,) = conn.execute("SELECT description FROM ops WHERE source_id = 9 AND op_id = 1003").fetchone()
    assert desc == "tracepoint syscalls:sys_enter_read where count == 7 && fd > 2 || count == 13 && fd > 2: arg0 = fd, arg1 = buf, arg2 = count"


def test_bad_tracepoint_entries_are_one_line_errors(bpf_required):
    cases = [
        (TracepointSpec(name="sched:sched_process_exec", filter="filename == 3"),
         "probes.tracepoints[0].filter: field 'filename' of sched:sched_process_exec is '__data_loc char[] filename', a string; compare it with ~ 'PATTERN', !~, == \"text\" or !="),
        (TracepointSpec(name="sched:sched_switch", filter="prev_comm == 1"),
         "probes.tracepoints[0].filter: field 'prev_comm' of sched:sched_switch is 'char prev_comm[16]', a string; compare it with ~ 'PATTERN', !~, == \"text\" or !="),
        (TracepointSpec(name="sched:sched_switch", filter="prev_pid ~ '1.*'"),
         "probes.tracepoints[0].filter: field 'prev_pid' is numeric; compare it with a number, not '1.*'"),
        (TracepointSpec(name="syscalls:sys_enter_getppid", filter="fd == 1"),
         "probes.tracepoints[0].filter: syscalls:sys_enter_getppid has no field 'fd' (fields: common_type, common_flags, common_preempt_count, common_pid, __syscall_nr)"),
        (TracepointSpec(name="nosuch:event"),
         "probes.tracepoints[0]: no tracepoint nosuch:event on this kernel (/sys/kernel/tracing/events/nosuch/event/format does not exist)"),
    ]
    for spec, message in cases:
        with pytest.raises(ConfigError) as exc:
            CustomFamily(tracepoints=[spec])
        assert str(exc.value) == message


def test_registry_builds_the_family_from_config_lists(bpf_required, workload):
    lib, _ = workload
    (fam,) = families(["custom"], custom={"uprobes": [UprobeSpec(library=str(lib), symbol="rec")], "tracepoints": []})
    assert isinstance(fam, CustomFamily) and fam.uprobes[0].path == str(lib)


def test_trace_command_with_config_records_custom_probes(bpf_required, tmp_path, workload, capsys):
    # GIVEN a config with only custom probes: add3 (both) and the driver's writes to stdout
    lib, drv = workload
    cfg = tmp_path / "whyprobe.yaml"
    cfg.write_text(
        "probes:\n"
        "  families: []\n"
        "  uprobes:\n"
        f"    - {{library: {lib}, symbol: add3, attach: both}}\n"
        "  tracepoints:\n"
        "    - {name: 'syscalls:sys_enter_write', filter: 'fd == 1'}\n"
    )
    db = tmp_path / "t.db"
    # WHEN traced from the command line
    rc = main(["trace", "--config", str(cfg), "--out", str(db), "--quiet", "--cmd", "--", str(drv), "50", "0"])
    assert rc == 0, capsys.readouterr().err
    # THEN 50 add3 calls and the one write of its output, named in the ops table
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT op, count(*) FROM events WHERE source = 9 GROUP BY op ORDER BY op").fetchall() == [(0, 50), (1000, 1)]
    out = str(sum(6 * i for i in range(50))) + "\n"
    assert conn.execute("SELECT arg0, arg2 FROM events WHERE op = 1000").fetchone() == (1, len(out))
    assert conn.execute("SELECT name FROM ops WHERE source_id = 9 ORDER BY op_id").fetchall() == [("libcustomtest.so:add3",), ("syscalls:sys_enter_write",)]


_BLOCK_CHILD = r"""
import mmap, os, sys
path = sys.argv[1]
print("ready", flush=True)
sys.stdin.readline()
with open(path, "wb") as f:
    f.write(os.urandom(1 << 20))
    f.flush()
    os.fsync(f.fileno())
os.posix_fadvise(os.open(path, os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)
fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 1 << 16)
while os.readv(fd, [buf]) > 0:
    pass
os.execv("/bin/true", ["true"])
"""


def test_string_patterns_are_evaluated_in_the_kernel(bpf_required, tmp_path):
    # GIVEN the seed's filter `rwbs ~ '.*W.*'` on block_rq_issue, its negation, no filter at all,
    # and a pattern on a __data_loc string (exec's filename)
    tps = [
        TracepointSpec(name="block:block_rq_issue", filter="rwbs ~ '.*W.*'"),
        TracepointSpec(name="block:block_rq_issue", filter="rwbs !~ '.*W.*'"),
        TracepointSpec(name="block:block_rq_issue"),
        TracepointSpec(name="sched:sched_process_exec", filter="filename ~ '/(usr/)?bin/true'"),
        TracepointSpec(name="sched:sched_process_exec", filter='filename == "/bin/echo" || filename == "/usr/bin/echo"'),
        TracepointSpec(name="sched:sched_process_exec", filter="filename !~ '.*/echo'"),
    ]
    fam = CustomFamily(tracepoints=tps)
    # WHEN the child writes and fsyncs 1 MiB on the ext4 root, reads it back with O_DIRECT, then execs /bin/true
    path = "/var/tmp/whyprobe-custom-rwbs.bin"
    try:
        _, _, ev, _ = _run_traced(tmp_path, fam, [sys.executable, "-c", _BLOCK_CHILD, path])
    finally:
        os.unlink(path)
    requests = {op: {(int(e["arg0"]), int(e["arg1"]), int(e["arg2"])) for e in ev[ev["op"] == op]} for op in (1000, 1001, 1002)}
    counts = {op: int((ev["op"] == op).sum()) for op in range(1000, 1006)}
    # THEN the write requests and the read requests are told apart in the kernel: together they are
    # exactly the unfiltered requests, none in both
    assert counts[1000] >= 1 and counts[1001] >= 1, counts
    assert counts[1000] + counts[1001] == counts[1002]
    assert requests[1000] | requests[1001] == requests[1002] and not requests[1000] & requests[1001]
    # AND on exec's __data_loc filename: the pattern and the negated pattern admit the one exec, the literal does not
    assert (counts[1003], counts[1004], counts[1005]) == (1, 0, 1)
