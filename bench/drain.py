"""Drain throughput: records/s from a full BPF ring into numpy, ours (mmap + bulk parse)
vs libbpf's ring_buffer__consume with one ctypes callback per record, side by side.

Run as root after `make bpf`:  .venv/bin/python bench/drain.py
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import time

import numpy as np

from whyprobe.kernel.loader import ProbeSet
from whyprobe.kernel.ring import RingReader
from whyprobe.events import EVENT_DTYPE

RING = 1 << 24
ROUNDS = 5

_lib = ct.CDLL("libbpf.so.1", use_errno=True)
SAMPLE_FN = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_size_t)
_lib.ring_buffer__new.restype = ct.c_void_p
_lib.ring_buffer__new.argtypes = [ct.c_int, SAMPLE_FN, ct.c_void_p, ct.c_void_p]
_lib.ring_buffer__consume.restype = ct.c_int
_lib.ring_buffer__consume.argtypes = [ct.c_void_p]
_lib.ring_buffer__free.argtypes = [ct.c_void_p]


def fill(n: int) -> None:
    for _ in range(n):
        os.getppid()


def main() -> None:
    capacity = RING // 112
    with ProbeSet(events_ring_bytes=RING) as ps:
        obj = ps.open("selftest")
        obj.load()
        obj.attach("handle_getppid")
        ps.add_targets([os.getpid()])
        reader = RingReader(ps.events_fd, EVENT_DTYPE)

        ours = []
        for _ in range(ROUNDS):
            fill(capacity)
            t0 = time.perf_counter()
            recs = reader.drain()
            ours.append(len(recs) / (time.perf_counter() - t0))
        reader.close()

        got = []

        @SAMPLE_FN
        def on_sample(ctx, data, size):  # the per-record callback style we avoid
            got.append(np.frombuffer(ct.string_at(data, size), EVENT_DTYPE, count=1))
            return 0

        rb = _lib.ring_buffer__new(ps.events_fd, on_sample, None, None)
        base = []
        for _ in range(ROUNDS):
            got.clear()
            fill(capacity)
            t0 = time.perf_counter()
            _lib.ring_buffer__consume(rb)
            base.append(len(got) / (time.perf_counter() - t0))
        _lib.ring_buffer__free(rb)
        drops = ps.drops()["ring"]

    ours_rate, base_rate = float(np.median(ours)), float(np.median(base))
    print(f"ring {RING >> 20} MiB, {capacity} records per round, {ROUNDS} rounds, drops {drops}")
    print(f"  whyprobe mmap + numpy bulk : {ours_rate / 1e6:8.2f} M records/s")
    print(f"  libbpf callback per record : {base_rate / 1e6:8.2f} M records/s")
    print(f"  ratio                      : {ours_rate / base_rate:8.1f}x")
    print(json.dumps({"bench": "drain", "value": ours_rate, "unit": "records/s", "target": 1e7,
                      "baseline": base_rate, "ratio": ours_rate / base_rate}))


if __name__ == "__main__":
    main()
