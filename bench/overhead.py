"""Per-call cost of whyprobe's CUDA probes vs a bare uprobe+uretprobe pair, side by side,
and attach+detach time of 50 symbols with one uprobe_multi link vs classic per-symbol uprobes.

A third line, the floor, is the least a call-duration tracer can do on this host: a
timestamp kept per thread at entry and one ring record at return, no arguments
(bench_bare.bpf.c). whyprobe's cost above the floor is its argument capture.

The target is the stand-in cudaLaunchKernel (its entry starts with push %rbp like the real
runtime's). Run as root after `make bpf`:  .venv/bin/python bench/overhead.py
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from whyprobe.demo.build import build_workloads
from whyprobe.kernel.elfsym import function_offsets
from whyprobe.kernel.bpfobject import BpfObject
from whyprobe.kernel.loader import ProbeSet, bpf_object_path
from whyprobe.kernel.ring import RingReader
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.cuda import ALL_SYMBOLS, CudaFamily
from whyprobe.events import EVENT_DTYPE

CALLS = 200_000
ROUNDS = 5
REAL_CUDART = os.path.join(os.path.dirname(__file__), "..", ".venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12")


def per_call_ns(w, lib: str, *, calls: int = CALLS, rounds: int = ROUNDS) -> float:
    """Best of `rounds` runs of `calls` launches on one pinned thread, ns per call."""
    best = float("inf")
    for _ in range(rounds):
        out = subprocess.run([str(w.driver), "-c", "0", lib, f"cudaLaunchKernel={calls}"], capture_output=True, text=True, check=True).stdout
        elapsed = int(next(line.split()[1] for line in out.splitlines() if line.startswith("elapsed_ns")))
        best = min(best, elapsed / calls)
    return best


def baseline(w, kind: str) -> float:
    """ns per call with bench_bare.bpf.c's `kind` pair ("bare" or "floor") on the stand-in cudaLaunchKernel."""
    off = function_offsets(w.cudart)["cudaLaunchKernel"]
    with BpfObject(bpf_object_path("bench_bare")) as obj:
        obj.load()
        obj.attach_uprobe_multi(f"handle_{kind}_entry", str(w.cudart), [off])
        obj.attach_uprobe_multi(f"handle_{kind}_return", str(w.cudart), [off], retprobe=True)
        if kind == "bare":
            return per_call_ns(w, str(w.cudart))
        with RingReader(obj.map_fd("floor_events"), EVENT_DTYPE) as reader:
            return min(_one_round(w, reader) for _ in range(ROUNDS))


def whyprobe_ns(w, *, session: bool, traced: bool) -> float:
    """ns per call with whyprobe's CUDA probes attached (one session program, or the entry/return
    pair), the workload traced (every call recorded) or not (another process on the same host)."""
    with ProbeSet(trace_all=traced, events_ring_bytes=1 << 26) as ps:
        CudaFamily([str(w.cudart)], session=session).attach(ps, TargetSpec(trace_all=traced))
        # the ring holds one round; it is drained between rounds
        with RingReader(ps.events_fd, EVENT_DTYPE) as reader:
            best = min(_one_round(w, reader, CALLS if traced else 0) for _ in range(ROUNDS))
        assert ps.drops()["ring"] == 0, ps.drops()
    return best


def _one_round(w, reader, expect: int = CALLS) -> float:
    out = subprocess.run([str(w.driver), "-c", "0", str(w.cudart), f"cudaLaunchKernel={CALLS}"], capture_output=True, text=True, check=True).stdout
    n = len(reader.drain())
    assert n == expect, n
    return int(next(line.split()[1] for line in out.splitlines() if line.startswith("elapsed_ns"))) / CALLS


def attach_detach_ms(classic: bool) -> tuple[float, float]:
    names = sorted(function_offsets(REAL_CUDART))[:50]
    offsets = [function_offsets(REAL_CUDART)[n] for n in names]
    cookies = [ALL_SYMBOLS["cudaMalloc"].cookie] * len(offsets)
    with ProbeSet() as ps:
        obj = ps.open("cuda")
        if classic:
            obj.set_classic_uprobe("handle_cuda_entry")
            obj.set_classic_uprobe("handle_cuda_return")
        obj.load()
        t0 = time.perf_counter()
        obj.attach_uprobe_multi("handle_cuda_entry", REAL_CUDART, offsets, cookies)
        obj.attach_uprobe_multi("handle_cuda_return", REAL_CUDART, offsets, cookies, retprobe=True)
        t1 = time.perf_counter()
        obj.detach_all()
        t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3


def main() -> None:
    w = build_workloads()
    untraced = per_call_ns(w, str(w.cudart))
    bare_ns = baseline(w, "bare")
    floor_ns = baseline(w, "floor")
    ours = whyprobe_ns(w, session=True, traced=True)
    pair = whyprobe_ns(w, session=False, traced=True)
    other = whyprobe_ns(w, session=True, traced=False)
    other_pair = whyprobe_ns(w, session=False, traced=False)
    ratio = ours / bare_ns
    multi = attach_detach_ms(False)
    classic = attach_detach_ms(True)
    print(f"cudaLaunchKernel (stand-in), best of {ROUNDS} x {CALLS:,} calls on one CPU:")
    print(f"  untraced             {untraced:8.0f} ns/call")
    print(f"  bare uprobe pair     {bare_ns:8.0f} ns/call  (+{bare_ns - untraced:.0f})")
    print(f"  floor (ts + record)  {floor_ns:8.0f} ns/call  (+{floor_ns - untraced:.0f}); floor / bare = {floor_ns / bare_ns:.3f}")
    print(f"  whyprobe (session)   {ours:8.0f} ns/call  (+{ours - untraced:.0f}); whyprobe / bare = {ratio:.3f} (target <= 1.15), "
          f"whyprobe / floor = {ours / floor_ns:.3f}")
    print(f"  whyprobe (pair)      {pair:8.0f} ns/call  (+{pair - untraced:.0f}); / bare = {pair / bare_ns:.3f}")
    print(f"another process calling the probed library, not traced: session {other:.0f} ns/call (+{other - untraced:.0f}), "
          f"pair {other_pair:.0f} ns/call (+{other_pair - untraced:.0f})")
    print(f"attach + detach of 50 symbols x entry/return: uprobe_multi {multi[0]:.1f} + {multi[1]:.1f} ms, "
          f"classic uprobes {classic[0]:.1f} + {classic[1]:.1f} ms (target < 150 ms)")
    print(json.dumps([
        {"bench": "overhead_per_call", "value": round(ours, 1), "unit": "ns/call", "target": round(bare_ns * 1.15, 1), "baseline": round(bare_ns, 1), "ratio": round(ratio, 3),
         "floor": round(floor_ns, 1), "floor_ratio": round(floor_ns / bare_ns, 3), "pair": round(pair, 1)},
        {"bench": "overhead_untraced_process", "value": round(other, 1), "unit": "ns/call", "target": None, "baseline": round(other_pair, 1),
         "ratio": round((other - untraced) / (other_pair - untraced), 3)},
        {"bench": "attach_detach_50", "value": round(sum(multi), 1), "unit": "ms", "target": 150, "baseline": round(sum(classic), 1),
         "ratio": round(sum(multi) / sum(classic), 3)},
    ]))


if __name__ == "__main__":
    main()
