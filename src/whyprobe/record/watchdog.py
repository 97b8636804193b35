"""Continue every process the tracer holds when the tracer goes away.

`python -m whyprobe.record.watchdog HELD_FD PIPE_FD`, started by
record/follow.py with the `held` map and the read end of a pipe whose write
end only the tracer holds. The read returns at EOF: the tracer closed it on
a clean stop (after writing CLEAN_STOP), or the kernel did because the tracer
died (SIGKILL, OOM). Then every process still in `held` gets SIGCONT, so no
target stays stopped.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import time

from whyprobe.kernel.libbpf import map_keys, map_lookup

HELD = struct.Struct("<QIi")  # struct wp_held (bpf/follow.bpf.c): ts_ns, pid, fd of the file opened
# Written by the tracer before it closes the pipe on a clean stop, its holds all answered.
CLEAN_STOP = b"stop"


def held_entries(held_fd: int) -> list[tuple[bytes, int, int, int]]:
    """(key, ts_ns, pid, fd) of every thread in `held` now."""
    out = []
    for key in list(map_keys(held_fd, 4)):
        raw = map_lookup(held_fd, key, HELD.size)
        if raw is not None:
            out.append((key, *HELD.unpack(raw)))
    return out


def resume(pid: int) -> None:
    """SIGCONT a held process, if it is still there."""
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def release_all(held_fd: int) -> int:
    """SIGCONT every process in `held`; how many entries there were."""
    entries = held_entries(held_fd)
    for _, _, pid, _ in entries:
        resume(pid)
    return len(entries)


def main(argv: list[str]) -> int:
    held_fd, pipe_fd = int(argv[0]), int(argv[1])
    # Terminal signals are for the tracer; the watchdog leaves only at EOF.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    said = b""
    while chunk := os.read(pipe_fd, 4096):
        said += chunk
    if said == CLEAN_STOP:
        release_all(held_fd)
        return 0
    # The tracer died: its links may outlive its pipe by a moment (its fds close one by one), sweep a few times.
    for _ in range(5):
        release_all(held_fd)
        time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
