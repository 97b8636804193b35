"""CUDA events name their thread once: the first record of each thread carries its comm, later ones
carry none (the helper was ~80 ns of every call), and the trace still names every thread."""

from __future__ import annotations

import sqlite3
import subprocess

import numpy as np

from cuda_helpers import trace_workload
from whyprobe.demo.build import build_workloads
from whyprobe.kernel.loader import ProbeSet
from whyprobe.kernel.ring import RingReader
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.cuda import CudaFamily
from whyprobe.events import EVENT_DTYPE

COMM = b"cuda_workload"


def test_only_the_first_record_of_each_thread_carries_its_comm(bpf_required):
    # GIVEN the CUDA probes on the stand-in runtime
    w = build_workloads()
    with ProbeSet(events_ring_bytes=1 << 22) as ps:
        CudaFamily([str(w.cudart)]).attach(ps, TargetSpec())
        reader = RingReader(ps.events_fd, EVENT_DTYPE)
        proc = subprocess.Popen([str(w.driver), "-w", "-t", "3", str(w.cudart), "cudaFree=40"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        proc.stdout.readline(), proc.stdout.readline()
        ps.add_targets([proc.pid])
        # WHEN three threads make 40 calls each
        proc.communicate("go\n")
        recs = reader.drain()
        reader.close()
    # THEN each thread's first record names it, its other 39 are blank, and the cgroup id is on all of them
    assert len(recs) == 120
    for tid in np.unique(recs["tid"]).tolist():
        mine = recs[recs["tid"] == tid]
        assert len(mine) == 40
        assert mine["comm"][0] == COMM
        assert set(mine["comm"][1:].tolist()) == {b""}
        assert len(set(mine["cgroup_id"].tolist())) == 1 and mine["cgroup_id"][0] != 0


def test_every_thread_of_a_trace_has_its_name(bpf_required, tmp_path):
    # WHEN a three-thread workload is traced through the session
    traced = trace_workload(tmp_path, str(build_workloads().cudart), ["cudaFree=25"], "-t", "3")
    # THEN thread_names has the comm of each of the three threads that made calls
    tids = set(traced.events()["tid"].tolist())
    assert len(tids) == 3
    con = sqlite3.connect(traced.db)
    names = dict(con.execute("SELECT tid, comm FROM thread_names").fetchall())
    con.close()
    assert {t: names.get(t) for t in tids} == {t: COMM.decode() for t in tids}
