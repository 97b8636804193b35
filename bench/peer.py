"""Per-call cost of whyprobe vs bpftrace on the same stand-in cudaLaunchKernel, side by side in one run.

Three tracers of one call's duration, each measured as ns per call above the untraced call:
  whyprobe          every call recorded with its arguments (the CUDA family's session program)
  bpftrace hist     an in-kernel log2 histogram of the call's duration (nothing per call leaves the kernel)
  bpftrace printf   one printf per call (per-call output, what a "record every call" bpftrace script does)
whyprobe must cost no more than bpftrace's histogram while keeping every call.

Run as root after `make bpf` (bpftrace is a Debian package):  .venv/bin/python bench/peer.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading

from overhead import CALLS, ROUNDS, per_call_ns, whyprobe_ns
from whyprobe.demo.build import build_workloads

# BEGIN fires once every probe is attached: the line it prints is the signal to start measuring.
READY = 'BEGIN {{ printf("ready\\n"); }} '
HIST = READY + "uprobe:{lib}:cudaLaunchKernel {{ @s[tid] = nsecs; }} uretprobe:{lib}:cudaLaunchKernel /@s[tid]/ {{ @h = hist(nsecs - @s[tid]); delete(@s[tid]); }}"
PRINTF = READY + (
    "uprobe:{lib}:cudaLaunchKernel {{ @s[tid] = nsecs; }} "
    'uretprobe:{lib}:cudaLaunchKernel /@s[tid]/ {{ printf("%d %d %d\\n", tid, retval, nsecs - @s[tid]); delete(@s[tid]); }}'
)


def bpftrace_ns(w, script: str) -> tuple[float, int]:
    """(ns per call while bpftrace runs `script` on the stand-in library, best of ROUNDS; lines it printed)."""
    bt = subprocess.Popen(["bpftrace", "-e", script.format(lib=w.cudart)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = [0]

    def drain() -> None:  # a full pipe would stall bpftrace and lose its output
        for line in bt.stdout:
            lines[0] += len(line.split()) == 3

    try:
        for line in bt.stdout:
            if line.strip() == "ready":
                break
        else:
            raise SystemExit(f"bpftrace did not start: {bt.stderr.read()[-2000:]}")
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        return per_call_ns(w, str(w.cudart)), lines
    finally:
        bt.send_signal(2)
        try:
            bt.wait(60)
        except subprocess.TimeoutExpired:
            bt.kill()


def main() -> None:
    if shutil.which("bpftrace") is None:
        sys.exit("bench/peer.py needs bpftrace (apt-get install bpftrace)")
    # A private build: uprobes are per file, and another user of the shared stand-in would add calls.
    w = build_workloads(tempfile.mkdtemp(prefix="whyprobe-peer-"))
    untraced = per_call_ns(w, str(w.cudart))
    ours = whyprobe_ns(w, session=True, traced=True)
    hist, _ = bpftrace_ns(w, HIST)
    printf, printed = bpftrace_ns(w, PRINTF)
    # Untraced again at the end: the best of both runs is the call's own cost on this (shared) host.
    untraced = min(untraced, per_call_ns(w, str(w.cudart)))
    added = {name: ns - untraced for name, ns in (("whyprobe", ours), ("hist", hist), ("printf", printf))}
    print(f"cudaLaunchKernel (stand-in), best of {ROUNDS} x {CALLS:,} calls on one CPU; untraced {untraced:.0f} ns/call")
    print(f"  whyprobe (every call, with arguments) {ours:8.0f} ns/call  +{added['whyprobe']:.0f}")
    print(f"  bpftrace in-kernel histogram          {hist:8.0f} ns/call  +{added['hist']:.0f}")
    print(f"  bpftrace printf per call              {printf:8.0f} ns/call  +{added['printf']:.0f}  "
          f"({printed[0]:,} of {ROUNDS * CALLS:,} lines reached user space)")
    print(f"  whyprobe / bpftrace histogram (added cost) = {added['whyprobe'] / added['hist']:.3f} (target <= 1.0)")
    print(json.dumps([
        {"bench": "peer_per_call", "value": round(added["whyprobe"], 1), "unit": "ns/call added", "target": round(added["hist"], 1),
         "baseline": round(added["hist"], 1), "ratio": round(added["whyprobe"] / added["hist"], 3), "bpftrace_printf": round(added["printf"], 1),
         "bpftrace_printf_lines": printed[0],
         "untraced": round(untraced, 1)},
    ]))


if __name__ == "__main__":
    main()
