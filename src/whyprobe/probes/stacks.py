"""Stacks: native user stacks symbolized with pyelftools, and CPython frames (3.10-3.13, probes/pyframes.py).

The BPF side records native IPs in the shared `stacks` map (frame pointers;
on-CPU samples in the profile object's content-keyed `sample_stacks`, which
on_rows turns into the same hashes) and, where an object includes
bpf/pystacks.bpf.h, (code object, instruction)
pairs in `py_stacks` under the id it puts in wp_event.aux (WP_F_HAS_PYSTACK).
This module tells the kernel where each target's interpreter keeps its state
(`py_procs`), and turns both into `stack_traces` rows:

    frames = [{"s": symbol, "f": file, "l": line, "py": bool}, ...]

Python frames come first (innermost first), then the native frames (innermost
first). A stack with Python frames gets its own hash (FNV-1a 64 over the
native IPs, then every (code, instruction) pair), since many Python call
sites share one native stack through the interpreter loop.

Python frames are decoded on the batch that first shows them, from the live
process or, once it has exited, from the kernel's copy of its code objects
(py_codes). Native frames are symbolized at the end from the maps seen while
the process lived.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from whyprobe.kernel.elfsym import c_string, function_symbols
from whyprobe.kernel.libbpf import map_lookup, map_update
from whyprobe.kernel.loader import ProbeSet
from whyprobe.probes.base import TargetSpec
from whyprobe.demangle import demangle
from whyprobe.events import F_HAS_PYSTACK, Source
from whyprobe.probes.pyframes import PY_CODE_KEY, PY_CODE_SIZE, Mapping, PythonFrames, image_signature, discover_python, read_maps

log = logging.getLogger(__name__)

FNV_OFFSET, FNV_PRIME, MASK64 = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1
PY_MAX_FRAMES = 32
PY_FRAME = struct.Struct("<QQ")
SAMPLE_DEPTH = 127
SAMPLE_STACK = struct.Struct(f"<II{SAMPLE_DEPTH + 1}Q")  # struct sample_stack in bpf/profile.bpf.c
CPU_SAMPLE = (int(Source.HOST), 16)


def fnv1a64(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK64
    return h


def as_int64(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


# ---- native symbolization ----------------------------------------------------------------


class ElfSymbols:
    """Function symbols of one ELF file (.dynsym, then .symtab) and its PT_LOAD segments.

    The tables stay arrays (kernel/elfsym.function_symbols) and a name is decoded when a lookup
    lands on it: a trace's libraries took pyelftools 1.4 s, this ~10 ms.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._names: dict[int, str] = {}
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            self.segments = [(s["p_offset"], s["p_vaddr"], s["p_filesz"]) for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            tables = [(syms[syms["name"] != 0], strtab) for syms, strtab in function_symbols(fh, elf, (".dynsym", ".symtab"))]
        self._strtabs = [strtab for _, strtab in tables]

        def column(field: str, dtype: type) -> np.ndarray:
            return np.concatenate([syms[field].astype(dtype) for syms, _ in tables] + [np.zeros(0, dtype)])

        # The first symbol at an address wins (.dynsym's exported name over a local alias).
        self.addrs, first = np.unique(column("value", np.uint64), return_index=True)
        self._sizes = column("size", np.uint64)[first]
        self._name_offs = column("name", np.uint32)[first]
        self._table = np.concatenate([np.full(len(syms), i, np.uint8) for i, (syms, _) in enumerate(tables)] + [np.zeros(0, np.uint8)])[first]

    def vaddr(self, file_offset: int) -> int | None:
        for off, vaddr, size in self.segments:
            if off <= file_offset < off + max(size, 1):
                return vaddr + file_offset - off
        return None

    def lookup(self, vaddr: int) -> str | None:
        i = int(np.searchsorted(self.addrs, np.uint64(vaddr), "right")) - 1
        if i < 0:
            return None
        size = int(self._sizes[i])
        if size and vaddr >= int(self.addrs[i]) + size:
            return None
        name = self._names.get(i)
        if name is None:
            name = self._names[i] = c_string(self._strtabs[int(self._table[i])], int(self._name_offs[i]))
        return name


@lru_cache(maxsize=256)
def _elf(path: str, _mtime_ns: int) -> ElfSymbols | None:
    try:
        return ElfSymbols(path)
    except (OSError, ELFError, ValueError) as exc:
        log.info("no symbols from %s: %s", path, exc)
        return None


def _open_elf(pid: int, m: Mapping) -> ElfSymbols | None:
    """The mapped file, also when deleted or replaced since (then through /proc/PID/map_files)."""
    candidates = [f"/proc/{pid}/map_files/{m.start:x}-{m.end:x}"]
    if m.path.startswith("/") and not m.path.endswith(" (deleted)"):
        candidates.insert(0, m.path)
    for path in candidates:
        try:
            mtime = os.stat(path).st_mtime_ns
        except OSError:
            continue
        elf = _elf(path, mtime)
        if elf is not None:
            return elf
    return None


def symbolize_native(pid: int, ips: Sequence[int], maps: list[Mapping] | None = None) -> list[dict]:
    """Frames for user IPs of `pid`: symbol and file, or module+offset when there is no symbol."""
    maps = maps if maps is not None else read_maps(pid)
    starts = [m.start for m in maps]
    frames = []
    for n, ip in enumerate(ips):
        # Return addresses point after the call: look up ip-1 for all but the innermost frame.
        probe = ip - 1 if n else ip
        i = bisect.bisect_right(starts, probe) - 1
        if i < 0 or probe >= maps[i].end:
            frames.append({"s": f"{ip:#x}", "f": "", "py": False})
            continue
        m = maps[i]
        module = m.path.removesuffix(" (deleted)")
        file_off = probe - m.start + m.offset
        elf = _open_elf(pid, m) if module.startswith("/") else None
        name = None
        if elf is not None:
            vaddr = elf.vaddr(file_off)
            name = elf.lookup(vaddr) if vaddr is not None else None
        frames.append({"s": demangle(name) if name else f"{Path(module).name or module}+{file_off:#x}", "f": module, "py": False})
    return frames


# ---- the family -----------------------------------------------------------------------------


class StacksFamily:
    """ProbeFamily for `--stack`: symbolizes native stacks and Python frames into stack_traces.

    It loads no object of its own: the stack map is shared (filled where
    capture_stacks is on, and by on-CPU samples) and py_procs/py_stacks live in
    each object that includes bpf/pystacks.bpf.h (cuda, profile). Session hooks
    used: tick(pids), on_stacks(seen), on_batch(records), and on_rows(rows) (to
    give events with Python frames their combined hash).

    The kernel walks a process's Python frames only once `py_procs` says where
    its interpreter is; until then its events carry native frames only. A
    launched command is configured for the tracer's holder process and then
    execs, and the periodic tick found the new interpreter up to ~300 ms later
    (#14.4: the first calls of a short workload had no Python frames). So a
    watcher thread looks at every new target every WATCH_POLL_S for its first
    WATCH_FOR_S (the WATCH_MAX youngest), and configures it as soon as its
    interpreter is mapped. Native
    frames are symbolized at the end (from the maps seen while the process
    lived), keeping the reader thread free to decode Python frames while the
    process and its code objects still exist.
    """

    name = "stacks"
    WATCH_POLL_S = 0.002
    WATCH_FOR_S = 5.0
    WATCH_MAX = 8  # the youngest targets only: a /proc read each per round (the rest: the 200 ms tick)

    def __init__(self) -> None:
        self.probes: ProbeSet | None = None
        self.pythons: dict[int, PythonFrames | None] = {}
        self.native: dict[int, tuple[list[int], list[dict]]] = {}  # hash -> (ips, frames), symbolized at the end
        self.combined: dict[int, tuple[list[int], list[dict], int]] = {}  # hash -> (ips, Python frames, native hash)
        self._unsymbolized: dict[int, tuple[int, list[int], list[Mapping]]] = {}  # hash -> (pid, ips, maps)
        self._sample_hash: dict[int, int] = {}  # sample_stacks key -> stack hash
        self._py_frames: dict[tuple[int, int], tuple[list[tuple[int, int]], list[dict]]] = {}
        self._configured: set[tuple[int, int]] = set()  # (map fd, pid)
        # Last maps seen per pid, and what they looked like (an exec replaces them):
        # symbolization still works after a short-lived process has exited.
        self._maps: dict[int, list[Mapping]] = {}
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, tuple[str, str]]] = {}  # pid -> (first seen, image_signature)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def attach(self, probes: ProbeSet, targets: TargetSpec) -> list[str]:
        self.probes = probes
        return self.tick(targets.pids)

    def _py_maps(self) -> list[tuple[int, int, int]]:
        """(py_procs, py_stacks, py_codes) fds of every loaded object that walks Python frames."""
        out = []
        for obj in self.probes.objects if self.probes else []:
            if obj.loaded and "py_procs" in obj.map_names():
                out.append((obj.map_fd("py_procs"), obj.map_fd("py_stacks"), obj.map_fd("py_codes")))
        return out

    def _kept_code(self, pid: int) -> Callable[[int], bytes | None]:
        def kept(code: int) -> bytes | None:
            for _, _, codes_fd in self._py_maps():
                raw = map_lookup(codes_fd, PY_CODE_KEY.pack(code, pid, 0), PY_CODE_SIZE)
                if raw is not None:
                    return raw
            return None

        return kept

    def tick(self, pids: Sequence[int]) -> list[str]:
        """Tell every pystacks-capable object where new targets keep their interpreter."""
        now = time.monotonic()
        new = [pid for pid in pids if pid not in self._watched]
        for pid in pids:
            if pid not in self._watched:
                self._watched[pid] = (now, image_signature(pid))
            self._refresh(pid)
        # The watcher runs while there are young targets (it ends when none is left).
        if new and not self._stop.is_set() and (self._watcher is None or not self._watcher.is_alive()):
            self._watcher = threading.Thread(target=self._watch, name="whyprobe-pywatch", daemon=True)
            self._watcher.start()
        return []

    def _refresh(self, pid: int) -> None:
        with self._lock:
            current = read_maps(pid)
            if current and current != self._maps.get(pid):
                execed = pid in self._maps and current[0] != self._maps[pid][0]
                self._maps[pid] = current
                # After an exec, or while the interpreter was not found yet (seen mid-exec, before
                # libpython is mapped): look again.
                if execed or self.pythons.get(pid, 0) is None:
                    self.pythons.pop(pid, None)
                    self._configured = {k for k in self._configured if k[1] != pid}
            if pid not in self.pythons:
                target = discover_python(pid)
                self.pythons[pid] = PythonFrames(target, self._kept_code(pid)) if target else None
            py = self.pythons[pid]
            if py is None:
                return
            for procs_fd, _, _ in self._py_maps():
                if (procs_fd, pid) not in self._configured:
                    map_update(procs_fd, pid.to_bytes(4, "little"), py.target.config())
                    self._configured.add((procs_fd, pid))

    def _watch(self) -> None:
        """Configure new targets the moment they exec into an interpreter (see the class doc), and
        keep their maps current while they load libraries (a short-lived process is symbolized
        from the last maps seen)."""
        rounds = 0
        while not self._stop.wait(self.WATCH_POLL_S):
            now = time.monotonic()
            rounds += 1
            young = sorted(((seen, pid) for pid, (seen, _) in list(self._watched.items()) if now - seen <= self.WATCH_FOR_S), reverse=True)
            if not young:
                return
            for seen, pid in young[: self.WATCH_MAX]:
                sig = self._watched[pid][1]
                current = image_signature(pid)
                # An exec: look at once. No interpreter found yet (libpython not mapped yet, or
                # none at all) or the mappings changed: look again every few rounds, a maps read each.
                execed = current[0] != sig[0]
                if execed or ((current != sig or self.pythons.get(pid) is None) and rounds % 5 == 0):
                    self._watched[pid] = (seen, current)
                    self._refresh(pid)

    def on_stacks(self, seen: Sequence[tuple[int, int, list[int]]]) -> None:
        cache: dict[int, list[Mapping]] = {}
        for pid, h, ips in seen:
            # Empty when the process has exited: symbolized from the last maps seen instead.
            self._unsymbolized[h] = (pid, list(ips), cache.setdefault(pid, read_maps(pid)))

    def _symbolize(self) -> None:
        for h, (pid, ips, maps) in self._unsymbolized.items():
            self.native[h] = (ips, symbolize_native(pid, ips, maps or self._maps.get(pid, [])))
        self._unsymbolized.clear()

    def _python_stack(self, pid: int, py_id: int) -> tuple[list[tuple[int, int]], list[dict]] | None:
        key = (pid, py_id)
        if key in self._py_frames:
            return self._py_frames[key]
        py = self.pythons.get(pid)
        if py is None:
            self.tick([pid])
            py = self.pythons.get(pid)
        for _, stacks_fd, _ in self._py_maps():
            raw = map_lookup(stacks_fd, py_id.to_bytes(8, "little"), 8 + 16 * PY_MAX_FRAMES)
            if raw is None:
                continue
            n = min(struct.unpack_from("<I", raw)[0], PY_MAX_FRAMES)
            pairs = [PY_FRAME.unpack_from(raw, 8 + 16 * i) for i in range(n)]
            frames = [f for f in (py.frame(c, ins) for c, ins in pairs) if f] if py else []
            self._py_frames[key] = (pairs, frames)
            return self._py_frames[key]
        return None

    def on_batch(self, records: np.ndarray) -> None:
        # Decode now, while the process (and its code objects) still exist.
        has = np.flatnonzero(records["flags"] & F_HAS_PYSTACK)
        for i in has.tolist():
            self._python_stack(int(records["pid"][i]), int(records["aux"][i]))

    def _sample_maps(self) -> list[int]:
        return [obj.map_fd("sample_stacks") for obj in (self.probes.objects if self.probes else []) if obj.loaded and "sample_stacks" in obj.map_names()]

    def _sample_stacks(self, rows: np.ndarray) -> None:
        """On-CPU samples name their native stack by a content key in `sample_stacks`
        (bpf/profile.bpf.c): give them the stack hash the session gives the same IPs."""
        sel = np.flatnonzero((rows["source"] == CPU_SAMPLE[0]) & (rows["op"] == CPU_SAMPLE[1]) & (rows["arg2"] != 0))
        if not len(sel):
            return
        keys = rows["arg2"][sel]
        maps: dict[int, list[Mapping]] = {}
        for key in np.unique(keys).tolist():
            if key in self._sample_hash:
                continue
            ips: list[int] = []
            for fd in self._sample_maps():
                raw = map_lookup(fd, (key & MASK64).to_bytes(8, "little"), SAMPLE_STACK.size)
                if raw is not None:
                    n = min(SAMPLE_STACK.unpack_from(raw)[0], SAMPLE_DEPTH)
                    ips = [ip for ip in np.frombuffer(raw, "<u8", n, 8).tolist() if ip]
                    break
            h = as_int64(fnv1a64(np.asarray(ips, "<u8").tobytes())) if ips else 0
            if h and h not in self.native and h not in self._unsymbolized:
                pid = int(rows["pid"][sel[np.flatnonzero(keys == key)[0]]])
                self._unsymbolized[h] = (pid, ips, maps.setdefault(pid, read_maps(pid)))
            self._sample_hash[key] = h  # content-keyed: the same key is always the same stack
        rows["stack_hash"][sel] = [self._sample_hash[k] for k in keys.tolist()]
        rows["arg2"][sel] = 0  # the key means nothing outside this trace

    def on_rows(self, rows: np.ndarray) -> None:
        """Give rows with Python frames the hash of (native IPs, Python pairs); call after on_batch."""
        self._sample_stacks(rows)
        has = np.flatnonzero(rows["flags"] & F_HAS_PYSTACK)
        for i in has.tolist():
            py = self._py_frames.get((int(rows["pid"][i]), int(rows["aux"][i]) & MASK64))
            if py is None:
                continue
            native_hash = int(rows["stack_hash"][i])
            ips = self._unsymbolized[native_hash][1] if native_hash in self._unsymbolized else self.native.get(native_hash, ([], []))[0]
            pairs, pframes = py
            data = np.asarray(ips, "<u8").tobytes() + np.asarray([x for p in pairs for x in p], "<u8").tobytes()
            h = as_int64(fnv1a64(data))
            self.combined.setdefault(h, (ips, pframes, native_hash))
            rows["stack_hash"][i] = h

    def stack_rows(self) -> list[tuple[int, str, str]]:
        import json

        self._symbolize()
        out = []
        for h, (ips, frames) in self.native.items():
            out.append((h, json.dumps([f"{ip:#x}" for ip in ips]), json.dumps(frames)))
        for h, (ips, pframes, native_hash) in self.combined.items():
            out.append((h, json.dumps([f"{ip:#x}" for ip in ips]), json.dumps(pframes + self.native.get(native_hash, ([], []))[1])))
        return out

    def finish(self, probes: ProbeSet, writer: object) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        rows = self.stack_rows()
        if rows:
            writer.put_rows("stack_traces", ("hash", "ips", "frames"), rows, replace=True)
