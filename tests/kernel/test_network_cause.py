"""Network as a cause, with real retransmits: a traced training loop fetches over TCP from a server in a
network namespace the test creates (IPv4 and IPv6); twice the link drops the request, TCP retransmits, and the GPU-idle
gaps are explained as `network` with the peer's address."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from whyprobe.analyze.explain import explain
from whyprobe.demo.build import build_workloads
from whyprobe.events import F_SOCK_OWNER
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.cuda import CudaFamily
from whyprobe.probes.host import NetFamily, SchedFamily
from whyprobe.record.session import TraceOptions, TraceSession
from whyprobe.store.reader import open_trace

pytestmark = pytest.mark.usefixtures("bpf_required")

STEPS, LOSSY, PORT = 10, (3, 7), 7311

CLIENT = r"""
import ctypes, socket, sys

class dim3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]

lib = ctypes.CDLL(sys.argv[1])
lib.cudaLaunchKernel.argtypes = [ctypes.c_void_p, dim3, dim3, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
sock = socket.create_connection((sys.argv[2], int(sys.argv[3])))
sock.settimeout(30)  # fail, never hang, if the link does not come back
print("connected", flush=True)
sys.stdin.readline()
for step in range(int(sys.argv[4])):
    for _ in range(5):
        assert lib.cudaLaunchKernel(0x1000, dim3(4, 1, 1), dim3(32, 1, 1), None, 0, None) == 0
    print("fetch", step, flush=True)
    sys.stdin.readline()
    sock.sendall(b"q" * 100)
    got = b""
    while len(got) < 16:
        got += sock.recv(16 - len(got))
print("done", flush=True)
"""

SERVER = r"""
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
srv = socket.create_server((sys.argv[1], int(sys.argv[2])), family=family)
print("listening", flush=True)
conn, _ = srv.accept()
while True:
    got = b""
    while len(got) < 100:
        chunk = conn.recv(100 - len(got))
        if not chunk:
            sys.exit(0)
        got += chunk
    conn.sendall(b"r" * 16)
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _retrans_segs() -> int:
    """Segments TCP retransmitted in this namespace (IPv4 and IPv6 share the counter)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Tcp:")]
    return int(lines[1][lines[0].index("RetransSegs")])


@pytest.fixture(params=["ipv4", "ipv6"])
def lossy_link(request):
    """A veth pair into a namespace of our own: (namespace, host address, namespace address, ns-side device)."""
    n = os.getpid() % 200
    ns, host_dev, ns_dev = f"wpnet{os.getpid()}", f"wpa{n}", f"wpb{n}"
    if request.param == "ipv4":
        host_ip, ns_ip, prefix, extra = f"10.251.{n}.1", f"10.251.{n}.2", "/30", []
    else:
        host_ip, ns_ip, prefix, extra = f"fd77:{n:x}::1", f"fd77:{n:x}::2", "/64", ["nodad"]
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host_dev, "type", "veth", "peer", "name", ns_dev, "netns", ns)
        _ip("addr", "add", f"{host_ip}{prefix}", "dev", host_dev, *extra)
        _ip("link", "set", host_dev, "up")
        if request.param == "ipv6":
            # Taking the link down must not flush the address (the IPv6 default does).
            subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{ns_dev}.keep_addr_on_down=1"], check=True)
        _ip("-n", ns, "addr", "add", f"{ns_ip}{prefix}", "dev", ns_dev, *extra)
        _ip("-n", ns, "link", "set", ns_dev, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns, host_ip, ns_ip, ns_dev
    finally:
        subprocess.run(["ip", "link", "del", host_dev], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_retransmits_during_gaps_are_network_causes_with_the_peer(tmp_path: Path, lossy_link) -> None:
    ns, host_ip, ns_ip, ns_dev = lossy_link
    server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER, ns_ip, str(PORT)], stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert server.stdout.readline() == "listening\n"
        cudart = build_workloads().cudart
        client = subprocess.Popen([sys.executable, "-c", CLIENT, str(cudart), ns_ip, str(PORT), str(STEPS)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdout.readline() == "connected\n"
        db = tmp_path / "t.db"
        families = [CudaFamily([str(cudart)]), SchedFamily(), NetFamily()]
        session = TraceSession(db, families, TargetSpec(pids=[client.pid]), TraceOptions(ring_bytes=1 << 22))
        try:
            session.start()
            client.stdin.write("go\n")
            client.stdin.flush()
            for step in range(STEPS):
                line = client.stdout.readline()
                assert line == f"fetch {step}\n", line
                if step not in LOSSY:
                    client.stdin.write("ok\n")
                    client.stdin.flush()
                    continue
                # WHEN the link drops the request until TCP has retransmitted it once
                before = _retrans_segs()
                _ip("-n", ns, "link", "set", ns_dev, "down")
                client.stdin.write("ok\n")
                client.stdin.flush()
                deadline = time.monotonic() + 20
                while _retrans_segs() == before:
                    assert time.monotonic() < deadline, "no retransmit within 20 s"
                    session.tick()
                    time.sleep(0.01)
                _ip("-n", ns, "link", "set", ns_dev, "up")
            assert client.stdout.readline() == "done\n"
            session.run(lambda: client.poll() is not None)
        finally:
            session.stop()
        assert client.wait() == 0
    finally:
        if client and client.poll() is None:
            client.kill()
        server.kill()
        server.wait()

    with open_trace(db) as t:
        tids = {tid for (tid,) in t.conn.execute("SELECT DISTINCT tid FROM events WHERE source = 1")}
        retrans = t.conn.execute("SELECT tid, flags, duration, detail FROM events WHERE source = 6").fetchall()
        doc = explain(t)
    # THEN the retransmits are instants tied to the client's thread and name both ends
    assert len(tids) == 1
    tid = tids.pop()
    mine = [r for r in retrans if r[1] & F_SOCK_OWNER]
    assert len(mine) >= len(LOSSY)
    assert {(r[0], r[2]) for r in mine} == {(tid, 0)}
    bracket = (lambda a: f"[{a}]") if ":" in ns_ip else (lambda a: a)
    peer = f"{bracket(ns_ip)}:{PORT}"
    assert all(r[3].startswith(f"{bracket(host_ip)}:") and r[3].endswith(f" -> {peer} ESTABLISHED") for r in mine)
    # AND the GPU-idle gaps they caused are explained as network, naming the peer
    gap = next(f for f in doc["findings"] if f["kind"] == "gap" and f["tid"] == tid)
    net = next(c for c in gap["causes"] if c["kind"] == "network")
    assert net["slow_calls"] == len(LOSSY)
    assert net["peers"] == [{"peer": peer, "retransmits": len(mine)}]
    assert gap["dominant_cause"] == "network"
    assert peer in gap["summary"] or any(peer in r for r in gap["recommendations"])
