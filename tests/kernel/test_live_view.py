"""The live view on a real trace: `whyprobe trace` on a terminal (a pty) while a workload runs shows the
per-op count and rate moving, and a ring too small for the workload shows its drop counter moving."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

from whyprobe.demo.build import build_workloads

ROW = re.compile(r"cudaLaunchKernel\s*│\s*([\d,]+)\s*│\s*([\d,]+)\s*│")
DROPS = re.compile(r"events dropped: ring ([\d,]+)")  # the live view's line (the final summary says "drops: ring")


def _num(s: str) -> int:
    return int(s.replace(",", ""))


def _run_on_a_terminal(argv: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run argv with stdin/stdout/stderr on a 140x40 pty; return (exit status, everything it drew)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=dict(os.environ, TERM="xterm-256color", COLUMNS="140"))
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the pty's last writer is gone
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(30), b"".join(chunks).decode(errors="replace")


def test_live_view_rates_and_drops_move_while_the_workload_runs(bpf_required, tmp_path):
    # GIVEN a launch loop of 1,500,000 calls traced through a ring far too small for it, on a terminal
    w = build_workloads()
    db = tmp_path / "t.db"
    status, screen = _run_on_a_terminal([sys.executable, "-m", "whyprobe", "trace", "--probes", "cuda", "--ring", "64KiB", "--out", str(db),
                                         "--lib", str(w.cudart), "--cmd", "--", str(w.driver), str(w.cudart), "cudaLaunchKernel=1500000"])
    assert status == 0, screen[-3000:]
    frames = [(_num(c), _num(r)) for c, r in ROW.findall(screen)]
    drops = [_num(d) for d in DROPS.findall(screen)]
    # THEN the view was redrawn while the workload ran: the count grows frame to frame, at a non-zero rate
    counts = [c for c, _ in frames]
    assert len(set(counts)) >= 3, screen[-3000:]
    assert counts == sorted(counts)
    assert sum(1 for _, rate in frames if rate > 0) >= 2
    # AND the drop counter moved while it ran (not only in the final line), never backwards
    assert drops == sorted(drops) and len(set(drops)) >= 2, drops
    final = re.search(r"Wrote .* \(([\d,]+) events, ([\d,]+) dropped\)", screen)
    assert final and _num(final.group(2)) >= drops[-1] > 0
    # AND what was recorded plus what was dropped is every call
    assert _num(final.group(1)) + _num(final.group(2)) == 1_500_000
