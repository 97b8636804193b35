"""Payload records -> `events.detail` text: paths, exec argv, socket addresses, TCP endpoints, kernel names.

describe() joins a batch of host-family records to their payloads (same
(tid, ts_ns)) with numpy and leaves the common case, a syscall's one ASCII
path, where the payload ring put it (events.Details).
"""

from __future__ import annotations

import ipaddress
import shlex
import socket
import struct
from typing import Sequence

import numpy as np

from whyprobe.events import F_HAS_PAYLOAD, Details, PayloadKind, Source
from whyprobe.kernel.ring import PayloadBatch

HOST_EXEC = 5
TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
    7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV",
}


def sockaddr_text(data: bytes) -> str:
    """struct sockaddr (in, in6, un) as 'ip:port', '[ip6]:port' or the unix path."""
    if len(data) < 2:
        return ""
    family = struct.unpack_from("<H", data)[0]
    if family == socket.AF_INET and len(data) >= 8:
        port = struct.unpack_from(">H", data, 2)[0]
        return f"{ipaddress.IPv4Address(data[4:8])}:{port}"
    if family == socket.AF_INET6 and len(data) >= 24:
        port = struct.unpack_from(">H", data, 2)[0]
        return f"[{ipaddress.IPv6Address(data[8:24])}]:{port}"
    if family == socket.AF_UNIX:
        path = data[2:]
        if path[:1] == b"\0":
            return "@" + path[1:].split(b"\0", 1)[0].decode("utf-8", "replace")
        return path.split(b"\0", 1)[0].decode("utf-8", "replace")
    return f"family {family}"


def tcp_retransmit_text(data: bytes, state: int) -> str:
    """struct wp_tcp_addrs (bpf/host.h) + TCP state as 'src -> dst STATE'."""
    if len(data) < 46:
        return ""
    sport, dport, family = struct.unpack_from("<HHH", data)
    if family == socket.AF_INET6:
        src, dst = f"[{ipaddress.IPv6Address(data[14:30])}]", f"[{ipaddress.IPv6Address(data[30:46])}]"
    else:
        src, dst = str(ipaddress.IPv4Address(data[6:10])), str(ipaddress.IPv4Address(data[10:14]))
    return f"{src}:{sport} -> {dst}:{dport} {TCP_STATES.get(state, str(state))}"


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


_RENAMES = (82, 264, 316)  # rename, renameat, renameat2: two paths, "old\0new"


def _match(ev_ts: np.ndarray, ev_tid: np.ndarray, ts: np.ndarray, tid: np.ndarray) -> np.ndarray:
    """For each event (ts, tid), the index of a payload with the same (ts, tid), or -1.

    Sorted on the u64 timestamp alone (fast); the rare payloads sharing a
    timestamp with another thread's are resolved one by one."""
    out = np.full(len(ev_ts), -1, np.int64)
    if not len(ts):
        return out
    order = np.argsort(ts, kind="stable")
    sts = ts[order]
    pos = np.minimum(np.searchsorted(sts, ev_ts), len(ts) - 1)
    hit = sts[pos] == ev_ts
    exact = hit & (tid[order[pos]] == ev_tid)
    out[exact] = order[pos[exact]]
    for i in np.flatnonzero(hit & ~exact).tolist():
        j = int(pos[i])
        while j < len(sts) and sts[j] == ev_ts[i]:
            if tid[order[j]] == ev_tid[i]:
                out[i] = order[j]
                break
            j += 1
    return out


def describe(records: np.ndarray, payloads: "PayloadBatch | Sequence[tuple[np.void, bytes]]") -> Details:
    """`events.detail` for each record of the host families, from payloads with the same (tid, ts_ns).

    Records without WP_F_HAS_PAYLOAD, or whose payload never came, get NULL.
    The BPF side submits payloads before their event, so drain the events ring
    first, then the payloads ring, and every payload an event announces is
    there unless the payload ring was full. The join is numpy; a plain path of
    a syscall (most details) is used where the ring put it, as long as it is
    ASCII; only the rest (exec argv, addresses, renames, other text) becomes a
    Python string on the way.
    """
    if not isinstance(payloads, PayloadBatch):
        payloads = PayloadBatch.from_pairs(list(payloads))
    n = len(records)
    offsets, lengths = np.zeros(n, np.int64), np.full(n, -1, np.int32)
    want = np.flatnonzero(records["flags"] & F_HAS_PAYLOAD)
    if not len(want) or not len(payloads):
        return Details(np.zeros(0, np.uint8), offsets, lengths)
    ev = records[want]
    hdr, buf = payloads.hdr, payloads.buf
    found = {}
    for kind in (PayloadKind.PATH, PayloadKind.ARGV, PayloadKind.SOCKADDR, PayloadKind.SYMBOL):
        sel = np.flatnonzero(hdr["kind"] == kind)
        m = _match(ev["ts_ns"], ev["tid"], hdr["ts_ns"][sel], hdr["tid"][sel]) if len(sel) else np.full(len(want), -1)
        found[kind] = np.where(m >= 0, sel[np.maximum(m, 0)] if len(sel) else -1, -1)
    path, argv, addr, sym = found[PayloadKind.PATH], found[PayloadKind.ARGV], found[PayloadKind.SOCKADDR], found[PayloadKind.SYMBOL]
    start = payloads.start
    plens = hdr["len"].astype(np.int64)
    # Plain paths: a syscall's one path, all ASCII (no byte >= 128 in its span).
    plain = (ev["source"] == Source.SYSCALL) & (path >= 0) & (addr < 0) & ~np.isin(ev["op"], _RENAMES)
    p = np.maximum(path, 0)
    if len(buf) and buf.max() >= 128:
        high = np.flatnonzero(buf >= 128)
        plain &= np.searchsorted(high, start[p] + plens[p]) == np.searchsorted(high, start[p])
    offsets[want[plain]] = start[p[plain]]
    lengths[want[plain]] = plens[p[plain]]
    raw = None
    extra: list[bytes] = []
    at = len(buf)
    for k in np.flatnonzero(~plain).tolist():
        if raw is None:
            raw = buf.tobytes()
        text = _text_of(raw, start, plens, ev[k], int(path[k]), int(argv[k]), int(addr[k]), int(sym[k]))
        if text is None:
            continue
        b = text.encode()
        offsets[want[k]], lengths[want[k]] = at, len(b)
        extra.append(b)
        at += len(b)
    text_buf = np.concatenate([buf, np.frombuffer(b"".join(extra), np.uint8)]) if extra else buf
    return Details(text_buf, offsets, lengths)


def _text_of(raw: bytes, start: np.ndarray, lens: np.ndarray, r: np.void, path: int, argv: int, addr: int, sym: int) -> str | None:
    def data(j: int) -> bytes:
        s = int(start[j])
        return raw[s : s + int(lens[j])]

    source, op = int(r["source"]), int(r["op"])
    if source == Source.TCP:
        return tcp_retransmit_text(data(addr), int(r["arg0"])) if addr >= 0 else None
    if source == Source.HOST and op == HOST_EXEC:
        args = [_text(a) for a in data(argv).rstrip(b"\0").split(b"\0") if a] if argv >= 0 else []
        return shlex.join(args) if args else (_text(data(path)) if path >= 0 else None)
    if sym >= 0:  # the kernel name a driver lookup was given
        return _text(data(sym))
    if addr >= 0:
        return sockaddr_text(data(addr))
    if path >= 0:
        parts = data(path).split(b"\0")
        return " -> ".join(_text(x) for x in parts) if len(parts) > 1 else _text(parts[0])
    return None
