"""The in-kernel pid filter (a byte per tgid, common.bpf.h): user space and targeting's fork/exit programs (follow.bpf.c) share it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testkit import wait_until
from whyprobe.errors import KernelError
from whyprobe.kernel.loader import ProbeSet
from whyprobe.record.follow import Follower

pytestmark = pytest.mark.usefixtures("bpf_required")

# Waits for a line, forks a child that sleeps (alive while we look), prints its pid; at the next line it ends the child and exits.
PARENT = (
    "import os, signal, sys, time\n"
    "sys.stdin.readline()\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    time.sleep(60); os._exit(3)\n"
    "print(pid, flush=True)\n"
    "sys.stdin.readline(); os.kill(pid, signal.SIGTERM); os.waitpid(pid, 0)\n"
)




def test_fork_enrols_the_child_and_exit_removes_it() -> None:
    with ProbeSet() as ps:
        follower = Follower(ps).start()
        proc = subprocess.Popen([sys.executable, "-c", PARENT],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            # GIVEN the parent enrolled from user space before it forks
            ps.add_targets([proc.pid])
            assert ps.is_target(proc.pid)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            child = int(proc.stdout.readline())
            # THEN the fork program enrolled the child in the kernel, and an unrelated pid is not enrolled
            assert ps.is_target(child)
            assert not ps.is_target(child + 1)
            # WHEN both exit
            proc.stdin.write("x\n")
            proc.stdin.flush()
            assert proc.wait(10) == 0
            # THEN the exit program took both out
            assert wait_until(lambda: not ps.is_target(child) and not ps.is_target(proc.pid), 5.0)
        finally:
            proc.kill()
            follower.stop()


def test_pids_outside_the_set_are_refused() -> None:
    with ProbeSet() as ps:
        follower = Follower(ps).start()
        try:
            with pytest.raises(KernelError, match="cannot be traced"):
                ps.add_targets([1 << 22])
        finally:
            follower.stop()
