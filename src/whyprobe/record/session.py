"""One trace: probe families attached to a shared ProbeSet, a reader thread draining the rings into the writer.

The reader thread is the only consumer of the rings: it drains whole spans
(numpy, no per-record Python), converts them to rows, joins payload text
(paths, argv, addresses) to its event, hashes new user stacks, feeds the live
statistics and hands the batch to the writer, whose bounded queue never
blocks it. Everything slower (attaching libraries a target dlopen'd,
enrolling children, reading drop counters) runs in `run()` on the caller's
thread. The UI only ever reads immutable snapshots.

Targeting (children, execs, libraries loaded late) is the kernel's, through
record/follow.py, whatever families are chosen; names are record/names.py's.

Hooks a probe family may define besides the ProbeFamily protocol:
  tick(pids) -> list[str]         periodic (~200 ms) work, e.g. attach new libraries
  held_libraries() -> list[str]   base-name prefixes of libraries to attach before their first call
  on_library(pid, path) -> list[str]  a target opened such a file and is held until this returns
  flags() -> dict                 merged into sessions.flags at the end
  on_payloads(PayloadBatch)       every drained payload record (MCP bytes, paths ...); iterates as (hdr, data)
  on_stacks(list[(pid, hash, ips)]) user stacks seen for the first time
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from whyprobe import clock
from whyprobe.analyze.stats import OpAccumulator
from whyprobe.errors import WhyprobeError
from whyprobe.kernel.libbpf import map_lookup
from whyprobe.kernel.loader import ProbeSet
from whyprobe.kernel.ring import PayloadBatch, PayloadReader, RingReader
from whyprobe.probes.base import ProbeFamily, TargetSpec
from whyprobe.record.follow import Follower
from whyprobe.record.names import Namer
from whyprobe.record.details import DetailJoiner
from whyprobe.events import EVENT_DTYPE
from whyprobe.store.rows import rows_from_records
from whyprobe.store.writer import Writer


log = logging.getLogger(__name__)

STACK_DEPTH = 127
TICK_S = 0.2
SNAPSHOT_S = 0.25
# A drain that took this share of either ring means it is filling fast: drain again at once.
# Otherwise the reader waits out the rest of TraceOptions.poll_ms: per-drain work (numpy per
# family, a writer transaction) then costs ~20 times a second, not per handful of records (at
# ~30 k events/s, draining every 5 ms took 0.6 cores, every 50 ms 0.26), and the kernel's
# forced wake-up at half full still ends the wait early.
BUSY_FILL = 1 / 8
# In-kernel aggregates (syscall counts) are written this often, so a killed trace keeps most of them.
CHECKPOINT_S = 5.0


@dataclass
class TraceOptions:
    ring_bytes: int = 1 << 24
    payload_ring_bytes: int = 1 << 22
    capture_stacks: bool = False
    trace_all: bool = False
    max_events_per_sec: int = 0
    max_db_mb: float = 0
    retention_hours: float = 0
    # storage.precision_ms: stored timestamps are rounded down to this grain (0: ns as measured).
    precision_ns: int = 0
    max_queue: int = 256
    # The reader drains this often, sooner when a ring passes half full.
    poll_ms: int = 50
    # Extra columns for this session's row (probes, pid_filter, argv ...).
    session_fields: dict = field(default_factory=dict)
    # Called on the reader thread with every drained batch (Prometheus metrics, live explain).
    on_records: list[Callable[[np.ndarray], None]] = field(default_factory=list)
    on_rows: list[Callable[[np.ndarray], None]] = field(default_factory=list)
    # Tests only: pause the reader between polls, to make a small ring overflow.
    drain_pause_s: float = 0.0
    # One system_snapshots row per second (CPU %, memory, load).
    snapshots: bool = True


@dataclass(frozen=True)
class OpStat:
    name: str
    count: int
    rate: float  # per second over the last snapshot interval
    p50_ns: float
    p99_ns: float
    errors: int


@dataclass(frozen=True)
class Snapshot:
    elapsed_s: float
    targets: tuple[int, ...]
    ops: tuple[OpStat, ...]
    events: int
    drops: dict
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class TraceSummary:
    path: str
    events: int
    ring_drops: int
    rate_drops: int
    queue_drops: int
    duration_s: float
    ops: tuple[OpStat, ...]
    warnings: tuple[str, ...]
    targets: tuple[int, ...]
    # Payload records lost in the kernel, and stored events left without their detail for it.
    payload_drops: int = 0
    details_lost: int = 0
    # Kernel losses by probe family and by CPU: {name: {"events": n, "payloads": n}}.
    by_family: dict = field(default_factory=dict)
    by_cpu: dict = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        """Events lost (payload losses are not: their events are stored)."""
        return self.ring_drops + self.rate_drops + self.queue_drops

    def to_json(self) -> dict:
        return {
            "out": self.path,
            "events": self.events,
            "dropped": {"ring": self.ring_drops, "rate": self.rate_drops, "queue": self.queue_drops, "total": self.dropped,
                        "by_family": self.by_family, "by_cpu": self.by_cpu},
            "payloads_lost": {"records": self.payload_drops, "events_without_detail": self.details_lost},
            "duration_s": round(self.duration_s, 3),
            "targets": list(self.targets),
            "ops": {o.name: {"count": o.count, "p50_ns": o.p50_ns, "p99_ns": o.p99_ns, "errors": o.errors} for o in self.ops},
            "warnings": list(self.warnings),
        }


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def as_int64(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def op_view(stats: OpAccumulator, prev_counts: dict[tuple[int, int], int], interval_s: float, *, exact: bool) -> tuple[OpStat, ...]:
    """The per-op lines of the live view and the final summary (analyze/stats.py computes them),
    with each op's rate since `prev_counts`, busiest first."""
    out = []
    for st in stats.stats(exact=exact):
        n = st["count"]
        rate = (n - prev_counts.get((st["source_id"], st["op_id"]), 0)) / interval_s if interval_s > 0 else 0.0
        out.append(OpStat(st["op"], n, rate, st["p50_ns"], st["p99_ns"], st["errors"]))
    return tuple(sorted(out, key=lambda o: -o.count))


class TraceSession:
    """Attach families, drain into `out`, stop cleanly. Use start(), run(until), stop()."""

    def __init__(self, out: Path | str, families: Sequence[ProbeFamily], targets: TargetSpec, options: TraceOptions | None = None) -> None:
        self.out = Path(out)
        self.families = list(families)
        self.targets = targets
        self.options = options or TraceOptions()
        self.probes: ProbeSet | None = None
        self.writer: Writer | None = None
        self.warnings: list[str] = []
        self.stats = OpAccumulator()
        self._pids: set[int] = set(targets.pids)
        self._stop = threading.Event()
        self._reader: threading.Thread | None = None
        self._ring: RingReader | None = None
        self._payloads: PayloadReader | None = None
        self._clock_offset = 0
        self._stack_hash: dict[int, int] = {}
        self._details = DetailJoiner()
        self._records_seen = 0
        self._started = 0.0
        self._snapshot = Snapshot(0.0, tuple(self._pids), (), 0, {"ring": 0, "rate": 0, "payload": 0, "queue": 0})
        self._prev_counts: dict[tuple[int, int], int] = {}
        self._last_snapshot = 0.0
        self._drops: dict = {"ring": 0, "rate": 0, "payload": 0}
        self._reader_error: BaseException | None = None
        self._snapshots = None
        self._last_checkpoint = 0.0
        self._namer: Namer | None = None
        self._follow: Follower | None = None
        self._exited: set[int] = set()
        # Families attach libraries from the follower's thread (holds) and from tick().
        self._lib_lock = threading.Lock()

    # ---- lifecycle -----------------------------------------------------------------

    def start(self) -> list[str]:
        """Open the database, load and attach every family, enroll targets, start draining."""
        opts = self.options
        self._clock_offset = clock.measure_offset_ns()
        session = dict(opts.session_fields)
        session["clock_offset_ns"] = self._clock_offset
        session.setdefault("probes", ",".join(f.name for f in self.families))
        session.setdefault("pid_filter", "all" if self.targets.trace_all else ",".join(map(str, sorted(self._pids))))
        self.writer = Writer(self.out, session=session, max_queue=opts.max_queue, max_db_mb=opts.max_db_mb, retention_hours=opts.retention_hours)
        self._namer = Namer(self.writer, self.families)
        try:
            self.probes = ProbeSet(
                trace_all=self.targets.trace_all or opts.trace_all,
                max_events_per_sec=opts.max_events_per_sec,
                capture_stacks=opts.capture_stacks,
                events_ring_bytes=opts.ring_bytes,
                payloads_ring_bytes=opts.payload_ring_bytes,
                clock_offset_ns=self._clock_offset,
            )
            for fam in self.families:
                self.warnings += fam.attach(self.probes, self.targets)
            self.probes.add_targets(self._pids)
            libnames = [n for f in self.families if hasattr(f, "held_libraries") for n in f.held_libraries()]
            self._follow = Follower(
                self.probes, libnames, on_fork=self._on_fork, on_exit=self._exited.add, on_exec=self._namer.exec_seen, on_library=self._on_library
            ).start()
            self._ring = RingReader(self.probes.events_fd, EVENT_DTYPE)
            self._payloads = PayloadReader(self.probes.payloads_fd)
            # Edge-triggered: the ring fds are readable whenever a record waits, so only the kernel's
            # forced wake-up (either ring more than half full; paths can fill the payload ring while
            # the event ring is far from it) ends the reader's wait early.
            self._wake = select.epoll()
            for fd in (self.probes.events_fd, self.probes.payloads_fd):
                self._wake.register(fd, select.EPOLLIN | select.EPOLLET)
            # stop() ends the wait at once, whatever poll_ms is.
            self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC)
            self._wake.register(self._stop_fd, select.EPOLLIN)
        except BaseException:
            self._teardown_on_error()
            raise
        self._started = time.monotonic()
        self._last_snapshot = self._started
        self._reader = threading.Thread(target=self._read_loop, name="whyprobe-reader", daemon=True)
        self._reader.start()
        if opts.snapshots:
            from whyprobe.record.snapshots import SnapshotThread

            self._snapshots = SnapshotThread(self.writer).start()
        return list(self.warnings)

    def add_targets(self, pids: Sequence[int]) -> None:
        new = [p for p in pids if p not in self._pids]
        if new and self.probes is not None:
            self._pids.update(new)
            self.probes.add_targets(new)

    def _on_fork(self, pid: int, ppid: int) -> None:
        self._pids.add(pid)

    def _on_library(self, pid: int, path: str) -> list[str]:
        warnings = []
        with self._lib_lock:
            for fam in self.families:
                if hasattr(fam, "on_library"):
                    warnings += fam.on_library(pid, path)
        return warnings

    def run(self, until: Callable[[], bool], stop: threading.Event | None = None) -> None:
        """Housekeeping on the caller's thread until `until()` is true or `stop` is set."""
        stop = stop or threading.Event()
        while not stop.is_set() and not until() and self._reader_error is None:
            self.tick()
            stop.wait(TICK_S)

    def tick(self) -> None:
        """Periodic work: new libraries, children, drop counters."""
        pids = sorted(self._pids - self._exited)
        for fam in self.families:
            if hasattr(fam, "tick"):
                try:
                    with self._lib_lock:
                        self.warnings += fam.tick(pids)
                except (OSError, WhyprobeError) as exc:  # a family's housekeeping (/proc, maps, attach) must not end the trace
                    log.warning("%s tick failed: %s", fam.name, exc)
        if self._follow.warnings:
            self.warnings += self._follow.warnings
            self._follow.warnings = []
        self._drops = self.probes.drops()
        self._namer.read_process_facts()
        now = time.monotonic()
        if now - self._last_checkpoint >= CHECKPOINT_S:
            self._last_checkpoint = now
            for fam in self.families:
                if hasattr(fam, "checkpoint"):
                    fam.checkpoint(self.writer)

    def stop(self) -> TraceSummary:
        """Detach (links first), drain what is left, let families flush, commit and close."""
        assert self.probes is not None and self.writer is not None
        self._follow.stop()
        self.warnings += self._follow.warnings
        self.probes.detach()
        if self._snapshots is not None:
            self._snapshots.stop()
        self._stop.set()
        os.eventfd_write(self._stop_fd, 1)
        if self._reader is not None:
            self._reader.join()
        # The reader has stopped: drain the rest here, until the rings are empty.
        while self._drain_once():
            pass
        self._namer.flush_execs()
        for fam in self.families:
            fam.finish(self.probes, self.writer)
        drops = self.probes.drops()
        flags: dict = self._follow.flags()
        for fam in self.families:
            if hasattr(fam, "flags"):
                flags.update(fam.flags())
        if self.warnings:
            flags["warnings"] = self.warnings
        flags["drops"] = {"by_family": drops["by_family"], "by_cpu": drops["by_cpu"], "events_without_detail": self._details.details_lost}
        flags["payload_ring"] = {"records": self._payloads.records_read, "bytes": self._payloads.bytes_read}
        self.writer.update_session(
            ring_drops=drops["ring"], rate_drops=drops["rate"], payload_drops=drops["payload"],
            events_seen=self._records_seen + drops["ring"] + drops["rate"], flags=flags,
        )
        self._ring.close()
        self._payloads.close()
        self._wake.close()
        os.close(self._stop_fd)
        self.probes.close()
        self.writer.close()
        elapsed = time.monotonic() - self._started
        summary = TraceSummary(
            path=str(self.out),
            events=self.writer.events_written,
            ring_drops=drops["ring"],
            rate_drops=drops["rate"],
            queue_drops=self.writer.queue_drops,
            duration_s=elapsed,
            ops=op_view(self.stats, {}, 0, exact=True),
            warnings=tuple(self.warnings),
            targets=tuple(sorted(self._pids)),
            payload_drops=drops["payload"],
            details_lost=self._details.details_lost,
            by_family=drops["by_family"],
            by_cpu=drops["by_cpu"],
        )
        if self._reader_error is not None:
            raise self._reader_error
        return summary

    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def pids(self) -> list[int]:
        return sorted(self._pids)

    @property
    def failed(self) -> BaseException | None:
        return self._reader_error

    def _teardown_on_error(self) -> None:
        if self._follow is not None:
            self._follow.stop()
        for r in (self._ring, self._payloads):
            if r is not None:
                r.close()
        if self.probes is not None:
            self.probes.close()
        if self.writer is not None:
            self.writer.close()

    # ---- reader thread -------------------------------------------------------------

    def _read_loop(self) -> None:
        interval = self.options.poll_ms / 1000.0
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                fill = self._drain_once()
                now = time.monotonic()
                if now - self._last_snapshot >= SNAPSHOT_S:
                    self._publish(now)
                if self.options.drain_pause_s:
                    self._stop.wait(self.options.drain_pause_s)
                elif fill < BUSY_FILL and now - began < interval:
                    self._wake.poll(interval - (now - began))
        except BaseException as exc:  # surfaced by run()/stop(): the trace must not hang silently
            log.error("reader failed: %s", exc)
            self._reader_error = exc

    def _drain_once(self) -> float:
        """Drain both rings once; returns the larger share of its ring either drain held (0.0: nothing)."""
        payload_bytes = self._payloads.bytes_read
        # Events first, then payloads: a payload is submitted before its event.
        records, payloads = self._ring.drain(), self._payloads.drain()
        fill = max(len(records) * self._ring.stride / self._ring.size, (self._payloads.bytes_read - payload_bytes) / self._payloads.size)
        if len(payloads):
            self._take_payloads(payloads)
        if not len(records):
            self._details.idle()
            return fill
        self._records_seen += len(records)
        rows = rows_from_records(records, self._clock_offset)
        if self.options.precision_ns:
            rows["timestamp"] -= rows["timestamp"] % self.options.precision_ns
        if self.options.capture_stacks:
            self._fill_stacks(records, rows)
        details = self._details.join(records, rows)
        self.stats.add(records["source"], records["op"], records["duration_ns"], records["ret"])
        for fam in self.families:
            fam.on_batch(records)
        self._namer.names(records)
        for fam in self.families:
            if hasattr(fam, "on_rows"):
                fam.on_rows(rows)
        for cb in self.options.on_records:
            cb(records)
        for cb in self.options.on_rows:
            cb(rows)
        self.writer.put_events(rows, details)
        return fill

    def _take_payloads(self, payloads: PayloadBatch) -> None:
        for fam in self.families:
            if hasattr(fam, "on_payloads"):
                fam.on_payloads(payloads)
        self._details.take(payloads)

    def _fill_stacks(self, records: np.ndarray, rows: np.ndarray) -> None:
        ids = records["stack_id"]
        has = ids >= 0
        if not has.any():
            return
        new_rows, seen = [], []
        for sid in np.unique(ids[has]).tolist():
            if sid in self._stack_hash:
                continue
            raw = map_lookup(self.probes.stacks_fd, int(sid).to_bytes(4, "little"), STACK_DEPTH * 8)
            ips = [ip for ip in np.frombuffer(raw, "<u8").tolist() if ip] if raw else []
            h = as_int64(fnv1a64(np.asarray(ips, "<u8").tobytes())) if ips else 0
            self._stack_hash[sid] = h
            if h:
                new_rows.append((h, "[" + ",".join(f'"{ip:#x}"' for ip in ips) + "]", ""))
                pid = int(records["pid"][np.flatnonzero(ids == sid)[0]])
                seen.append((pid, h, ips))
        if new_rows:
            self.writer.put_rows("stack_traces", ("hash", "ips", "frames"), new_rows)
            for fam in self.families:
                if hasattr(fam, "on_stacks"):
                    fam.on_stacks(seen)
        lookup = self._stack_hash
        rows["stack_hash"][has] = [lookup[s] for s in ids[has].tolist()]

    def _publish(self, now: float) -> None:
        interval = now - self._last_snapshot
        drops = dict(self._drops, queue=self.writer.queue_drops, details_lost=self._details.details_lost)
        ops = op_view(self.stats, self._prev_counts, interval, exact=False)
        self._prev_counts = self.stats.counts()
        self._last_snapshot = now
        self._snapshot = Snapshot(now - self._started, tuple(sorted(self._pids)), ops, self._records_seen, drops, tuple(self.warnings))
