"""bpf/bench_producer.bpf.c through BpfObject.test_run: the records bench/ingest.py feeds the session.

The bench's numbers are only as good as this producer: each run must put
exactly the records it was asked for into the shared ring, with the fields it
was given, and count every one that did not fit as a ring drop.
"""

from __future__ import annotations

import errno
import struct
import time

import numpy as np
import pytest

from whyprobe.kernel.libbpf import BpfError
from whyprobe.kernel.loader import ProbeSet
from whyprobe.kernel.ring import PayloadReader, RingReader
from whyprobe.events import EVENT_DTYPE, F_HAS_PAYLOAD, PayloadKind, Source, op_by_name

pytestmark = pytest.mark.usefixtures("bpf_required")

RECORD_BYTES = 112  # 8-byte ring header + 104-byte wp_event


def _ctx(count: int, pid: int, tid: int, seq: int, duration_ns: int, mode: int = 0) -> bytes:
    return struct.pack("<6Q", count, pid, tid, seq, duration_ns, mode)


def _producer(ring_bytes: int) -> ProbeSet:
    ps = ProbeSet(events_ring_bytes=ring_bytes)
    ps.open("bench_producer").load()
    return ps


def test_one_run_writes_exactly_the_records_asked_for() -> None:
    # GIVEN the producer on a ring with room for everything
    with _producer(1 << 20) as ps:
        obj = ps.objects[0]
        ring = RingReader(ps.events_fd, EVENT_DTYPE)
        before = time.monotonic_ns()
        # WHEN one run is asked for 1,000 events of pid 4321 / tid 4322 numbered from 500
        written = obj.test_run("produce", _ctx(1000, 4321, 4322, 500, 20_000))
        after = time.monotonic_ns()
        recs = ring.poll(10)
        ring.close()
        # THEN 1,000 cudaFree records with exactly those fields, in order, none dropped
        seq = np.arange(500, 1500, dtype=np.uint64)
        assert written == 1000
        assert len(recs) == 1000
        assert set(recs["source"]) == {Source.CUDA}
        assert set(recs["op"]) == {op_by_name("cudaFree").op}
        assert set(recs["pid"]) == {4321} and set(recs["tid"]) == {4322}
        assert np.array_equal(recs["arg1"], seq)
        assert np.array_equal(recs["arg0"], 0x7F0000000000 + (seq << np.uint64(8)))
        assert np.array_equal(recs["duration_ns"], 20_000 + seq % 1024)
        assert set(recs["ret"]) == {0} and set(recs["stack_id"]) == {-1} and set(recs["flags"]) == {0}
        assert set(recs["comm"]) == {b""}
        ts = recs["ts_ns"].astype(np.int64)
        assert before <= ts[0] and ts[-1] <= after and (np.diff(ts) >= 0).all()
        assert ps.drops() == {"ring": 0, "rate": 0, "payload": 0, "by_family": {}, "by_cpu": {}}


def test_detail_and_new_process_modes_write_what_the_payload_and_naming_paths_meet() -> None:
    # GIVEN the producer on rings with room for everything
    with _producer(1 << 20) as ps:
        obj = ps.objects[0]
        ring, payloads = RingReader(ps.events_fd, EVENT_DTYPE), PayloadReader(ps.payloads_fd)
        # WHEN one run makes 300 openat events with paths, another 200 events of new processes
        assert obj.test_run("produce", _ctx(300, 4321, 4322, 0x10, 20_000, 1)) == 300
        assert obj.test_run("produce", _ctx(200, 5000, 5000, 0, 20_000, 2)) == 200
        recs, pl = ring.poll(10), payloads.poll(10)
        ring.close()
        payloads.close()
        # THEN each openat event has F_HAS_PAYLOAD and one PATH payload at its (tid, ts), sized to the path
        opens, fresh = recs[:300], recs[300:]
        assert set(opens["source"]) == {Source.SYSCALL} and set(opens["op"]) == {257} and set(opens["flags"]) == {F_HAS_PAYLOAD}
        assert len(pl) == 300 and set(pl.hdr["kind"]) == {PayloadKind.PATH}
        assert np.array_equal(pl.hdr["ts_ns"], opens["ts_ns"]) and set(pl.hdr["tid"]) == {4322}
        assert [pl.data(i) for i in (0, 299)] == [b"/usr/lib/python3/site-packages/mod_00000010", b"/usr/lib/python3/site-packages/mod_0000013b"]
        assert payloads.bytes_read == 300 * (8 + 48 + 48)
        # AND the new-process events each come from their own pid and tid, named
        assert np.array_equal(fresh["pid"], np.arange(5000, 5200)) and np.array_equal(fresh["tid"], fresh["pid"])
        assert set(fresh["comm"]) == {b"storm"} and set(fresh["source"]) == {Source.CUDA}
        assert ps.drops()["payload"] == 0


def test_full_ring_counts_every_record_that_did_not_fit() -> None:
    # GIVEN a one-page ring (36 records of 112 bytes)
    with _producer(4096) as ps:
        obj = ps.objects[0]
        ring = RingReader(ps.events_fd, EVENT_DTYPE)
        # WHEN 5,000 events are produced without draining, then 100 more after a drain
        first_written = obj.test_run("produce", _ctx(5000, 1, 2, 0, 1))
        first = ring.poll(10)
        second_written = obj.test_run("produce", _ctx(100, 1, 2, 5000, 1))
        second = ring.poll(10)
        ring.close()
        drops = ps.drops()["ring"]
        # THEN the ring kept the earliest records it had room for and counted the rest as drops
        capacity = 4096 // RECORD_BYTES
        assert first_written == len(first) == capacity
        assert np.array_equal(first["arg1"], np.arange(capacity))
        assert second_written == len(second) == capacity
        assert np.array_equal(second["arg1"], np.arange(5000, 5000 + capacity))
        assert len(first) + len(second) + drops == 5_100
        assert drops == 5_100 - 2 * capacity


def test_a_rejected_run_is_a_bpf_error() -> None:
    # GIVEN the producer, which reads five u64 arguments from its context
    with _producer(1 << 16) as ps:
        # WHEN it is run with a context of one u64
        with pytest.raises(BpfError) as exc:
            ps.objects[0].test_run("produce", struct.pack("<Q", 10))
        # THEN the kernel's refusal comes back as a BpfError naming the step and the program
        assert exc.value.errno == errno.EINVAL
        assert str(exc.value).startswith("test run produce failed: EINVAL")
