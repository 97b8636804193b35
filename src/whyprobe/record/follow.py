"""Targeting in the kernel, whatever families are chosen (bpf/follow.bpf.c).

Children of traced processes are enrolled at fork and taken out at exit by
the kernel itself; this module hears of it (and of execs, which make cached
names stale) from the `notices` ring, on its own thread.

Late loads: a traced process that opens a library some family probes (by
base-name prefix: libcudart.so, libssl.so, a --lib or config library) is
stopped by the kernel before the open returns. This thread names the file
from the process's fd, lets the families attach to it, then continues the
process, so not one call into the library is missed. A watchdog process
(record/watchdog.py) shares the map of held threads and continues whatever
is left in it when this process goes away, however it goes (SIGKILL too).
"""

from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from whyprobe.kernel import caps
from whyprobe.kernel.bpfobject import BpfObject
from whyprobe.kernel.libbpf import map_delete
from whyprobe.kernel.loader import ProbeSet
from whyprobe.kernel.ring import RingReader
from whyprobe.record import watchdog

log = logging.getLogger(__name__)

# Mirrors of bpf/follow.h (tests/unit/test_follow.py checks them against BTF).
LIBNAMES, LIBNAME_LEN = 16, 28
NOTICE_FORK, NOTICE_EXIT, NOTICE_EXEC, NOTICE_HOLD = 1, 2, 3, 4
NOTICE_PATH = NOTICE_ARGS = 256
NOTICE_DTYPE = np.dtype(
    [("ts_ns", "<u8"), ("start_ns", "<u8"), ("kind", "<u4"), ("pid", "<u4"), ("tid", "<u4"), ("ppid", "<u4"), ("fd", "<i4"), ("args_len", "<u4"),
     ("comm", "S16"), ("path", "S%d" % NOTICE_PATH), ("args", "V%d" % NOTICE_ARGS)]
)
# Forks, exits and execs are read this often (a hold wakes the follower at once).
POLL_MS = 20


@dataclass(frozen=True)
class Hold:
    """One late load: the thread stopped at its open, the file, how long it was held."""

    pid: int
    tid: int
    path: str
    held_ns: int


@dataclass(frozen=True)
class Exec:
    """An exec of a traced process, as the kernel saw it: the new program's comm, file name and argv head."""

    pid: int
    tid: int
    ppid: int
    comm: str
    path: str
    argv: list[str]
    started_at: int  # unix ns: when the process started (an exec keeps it)


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def pack_libnames(prefixes: Sequence[str]) -> bytes:
    """The `libnames` rodata array: (len, name) per prefix, at most LIBNAMES of them.

    A name longer than LIBNAME_LEN is cut: still a prefix of the file names it
    was for, and the family checks the whole name of every file it is offered.
    """
    out = b""
    for name in list(dict.fromkeys(p for p in prefixes if p))[:LIBNAMES]:
        raw = name.encode()[:LIBNAME_LEN]
        out += struct.pack("<I", len(raw)) + raw.ljust(LIBNAME_LEN, b"\0")
    return out


def _program_chosen(prog: str, names: set[str], btf: bool) -> bool:
    """tp_btf programs have a raw_tp twin `<name>_raw`: load one of each pair."""
    if prog.endswith("_raw"):
        return not btf
    if prog + "_raw" in names:
        return btf
    return True


class Follower:
    """Load follow.bpf.c into `probes` (after every family), run the notice thread and the watchdog.

    Callbacks run on the follower's thread: on_fork(pid, ppid), on_exit(pid),
    on_exec(Exec) and on_library(pid, path) -> warnings, which attaches
    a family to a held process's library before it runs on.
    """

    def __init__(
        self,
        probes: ProbeSet,
        libnames: Sequence[str] = (),
        *,
        on_fork: Callable[[int, int], None] | None = None,
        on_exit: Callable[[int], None] | None = None,
        on_exec: Callable[[Exec], None] | None = None,
        on_library: Callable[[int, str], list[str]] | None = None,
    ) -> None:
        self.probes = probes
        self.libnames = list(libnames) if on_library else []
        self.on_fork, self.on_exit, self.on_exec, self.on_library = on_fork, on_exit, on_exec, on_library
        self.holds: list[Hold] = []
        self.warnings: list[str] = []
        self.obj: BpfObject | None = None
        self._ring: RingReader | None = None
        self._watchdog: subprocess.Popen | None = None
        self._pipe_w: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Follower":
        obj = self.probes.open("follow")
        names = set(obj.program_names())
        btf = caps.can("tp_btf")
        enabled = [p for p in sorted(names) if _program_chosen(p, names, btf)]
        if not self.libnames:
            enabled = [p for p in enabled if "openat" not in p]
        for p in names:
            obj.set_autoload(p, p in enabled)
        packed = pack_libnames(self.libnames)
        extra = list(dict.fromkeys(self.libnames))[LIBNAMES:]
        if extra:
            self.warnings.append(f"only {LIBNAMES} library names are held at their open; attached when seen mapped instead: {', '.join(extra)}")
        obj.set_rodata(nr_libnames=len(packed) // (4 + LIBNAME_LEN), libnames=packed)
        obj.load()
        self.obj = obj
        if self.libnames:
            # Before the first hold can happen: someone must be there to continue it.
            self._start_watchdog(obj.map_fd("held"))
        for p in enabled:
            obj.attach(p)
        self._ring = RingReader(obj.map_fd("notices"), NOTICE_DTYPE)
        self._thread = threading.Thread(target=self._loop, name="whyprobe-follow", daemon=True)
        self._thread.start()
        return self

    def _start_watchdog(self, held_fd: int) -> None:
        r, w = os.pipe()
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-m", "whyprobe.record.watchdog", str(held_fd), str(r)],
                pass_fds=(held_fd, r),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C or a kill of the tracer's group must not take it along
            )
        finally:
            os.close(r)
        self._pipe_w = w

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll(POLL_MS)
            except Exception as exc:  # a failed attach must not leave later holds unanswered
                log.warning("follow: %s", exc)

    def poll(self, timeout_ms: int) -> None:
        """Handle notices, then answer every hold in `held` (the map is the truth when a notice was lost)."""
        for n in self._ring.poll(timeout_ms):
            kind, pid = int(n["kind"]), int(n["pid"])
            if kind == NOTICE_FORK and self.on_fork:
                self.on_fork(pid, int(n["ppid"]))
            elif kind == NOTICE_EXIT and self.on_exit:
                self.on_exit(pid)
            elif kind == NOTICE_EXEC and self.on_exec:
                argv = bytes(n["args"])[: int(n["args_len"])].rstrip(b"\0").split(b"\0")
                started = int(n["start_ns"]) + self.probes.clock_offset_ns
                self.on_exec(Exec(pid, int(n["tid"]), int(n["ppid"]), _text(n["comm"]), _text(n["path"]), [_text(a) for a in argv if a], started))
        if self.libnames:
            self.release_held(attach=True)

    def release_held(self, *, attach: bool) -> int:
        """Attach (if asked) to what each held thread opened, then continue its process."""
        fd = self.obj.map_fd("held")
        released = 0
        for key, ts, pid, lib_fd in watchdog.held_entries(fd):
            tid = struct.unpack("<I", key)[0]
            if attach and self.on_library:
                try:
                    path = os.readlink(f"/proc/{pid}/fd/{lib_fd}")
                except OSError:  # gone meanwhile: nothing to attach, still continue it below
                    path = ""
                if path:
                    self.warnings += self.on_library(pid, path)
                    self.holds.append(Hold(pid, tid, path, time.monotonic_ns() - ts))
            map_delete(fd, key)
            watchdog.resume(pid)
            released += 1
        return released

    def flags(self) -> dict:
        """What sessions.flags says about late loads."""
        return {"held_loads": [{"pid": h.pid, "tid": h.tid, "path": h.path, "held_ns": h.held_ns} for h in self.holds]}

    def stop(self) -> None:
        """Detach, answer every hold still pending (without attaching), let the watchdog go."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.obj is not None:
            self.obj.detach_all()
            if self.libnames:
                self.release_held(attach=False)
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._pipe_w is not None:
            # Every hold is answered: CLEAN_STOP before EOF tells the watchdog that one sweep will do.
            os.write(self._pipe_w, watchdog.CLEAN_STOP)
            os.close(self._pipe_w)
            self._pipe_w = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(10)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
            self._watchdog = None
