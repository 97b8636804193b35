"""Cost of tying TCP retransmits to their traced owner (net family) and of the mem family, side by side.

A child process pinned to CPU 0 ping-pongs 64 bytes over a loopback TCP
connection between two threads (every round trip: two sends and two receives by traced threads, so
four sock_send_length/sock_recv_length hits). Each rep times, back to back:
no BPF; the net family traced without its socket-owner programs; the net family
traced with them (what this feature adds per send/recv); net + mem traced (mem
fires only while the kernel reclaims or compacts, so it should add nothing
here). The phase order rotates between reps; ratios are per rep against that
rep's baseline, and medians are reported.
Target: socket-owner tracking adds < 2 % to a send/recv-bound loop.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap

from whyprobe.kernel.loader import ProbeSet
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.host import MemFamily, _load_and_attach

ROUND_TRIPS = 20_000
REPS = 11

CHILD = textwrap.dedent(
    f"""
    import os, socket, sys, threading, time
    os.sched_setaffinity(0, {{0}})
    srv = socket.create_server(("127.0.0.1", 0))
    def echo(conn):
        while True:
            data = conn.recv(64)
            if not data:
                return
            conn.sendall(data)
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    threading.Thread(target=echo, args=(conn,), daemon=True).start()
    for line in sys.stdin:
        t0 = time.perf_counter_ns()
        for _ in range({ROUND_TRIPS}):
            cli.sendall(b"x" * 64)
            got = 0
            while got < 64:
                got += len(cli.recv(64 - got))
        print(time.perf_counter_ns() - t0, flush=True)
    """
)


def _run(child: subprocess.Popen) -> float:
    child.stdin.write("go\n")
    child.stdin.flush()
    return int(child.stdout.readline()) / ROUND_TRIPS


def _traced(child: subprocess.Popen, *, owner: bool, mem: bool) -> float:
    with ProbeSet() as ps:
        _load_and_attach(ps, "net", skip=() if owner else ("handle_sock_send", "handle_sock_recv"))
        if mem:
            MemFamily().attach(ps, TargetSpec(pids=[]))
        ps.add_targets([child.pid])
        return _run(child)


def main() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    base, plain, owner, mem = [], [], [], []
    _run(child)  # warm up
    phases = [
        (base, lambda: _run(child)),
        (plain, lambda: _traced(child, owner=False, mem=False)),
        (owner, lambda: _traced(child, owner=True, mem=False)),
        (mem, lambda: _traced(child, owner=True, mem=True)),
    ]
    for rep in range(REPS):
        # Rotate the phase order so load that drifts within a rep hits every phase alike.
        for out, run in phases[rep % 4:] + phases[: rep % 4]:
            out.append(run())
    child.stdin.close()
    child.wait()

    def ratio(xs: list[float], against: list[float]) -> float:
        return statistics.median(x / b for x, b in zip(xs, against))

    print(f"{ROUND_TRIPS} loopback TCP round trips (64 B) x {REPS} reps, traced child")
    print(f"  no BPF                 : {statistics.median(base) / 1e3:8.2f} us per round trip (median)")
    for label, xs in (("net, no owner tracking", plain), ("net with owner tracking", owner), ("net + mem", mem)):
        print(f"  {label:<23}: {statistics.median(xs) / 1e3:8.2f} us  ({(ratio(xs, base) - 1) * 100:+.2f} % vs no BPF)")
    added = ratio(owner, plain)
    print(f"  owner tracking adds {(added - 1) * 100:+.2f} % over the net family without it; mem adds {(ratio(mem, owner) - 1) * 100:+.2f} %")
    print(json.dumps({"bench": "net_mem_overhead", "value": added, "unit": "ratio (net with owner tracking / without)",
                      "target": 1.02, "baseline": statistics.median(plain), "ratio": added, "mem_ratio": ratio(mem, owner),
                      "net_vs_none": ratio(owner, base)}))


if __name__ == "__main__":
    main()
