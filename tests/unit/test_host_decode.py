"""Pure decoding of the host and stacks families: payload text, syscall names, op ids, line tables, ELF symbols."""

from __future__ import annotations

import re
from collections import defaultdict
import socket
import sqlite3
import struct
import sys
from pathlib import Path

import numpy as np
from elftools.elf.elffile import ELFFile

from whyprobe.kernel.ring import PayloadBatch
from whyprobe.probes.host import describe, sockaddr_text, tcp_retransmit_text
from whyprobe.probes.pyframes import line_for
from whyprobe.probes.stacks import ElfSymbols
from whyprobe.store import fastsql
from whyprobe.syscalls_x86_64 import SYSCALL_NAMES, syscall_name, syscall_nr, syscall_ops
from whyprobe.events import EVENT_DTYPE, F_HAS_PAYLOAD, PAYLOAD_DTYPE, PayloadKind, Source, op_info

BPF = Path(__file__).resolve().parents[2] / "src/whyprobe/bpf"


def _payload(tid: int, ts: int, kind: int, data: bytes):
    hdr = np.zeros(1, PAYLOAD_DTYPE)[0]
    hdr["tid"], hdr["ts_ns"], hdr["kind"], hdr["len"] = tid, ts, kind, len(data)
    return hdr, data


def _record(tid: int, ts: int, source: int, op: int, **fields) -> np.ndarray:
    r = np.zeros(1, EVENT_DTYPE)
    r["tid"], r["ts_ns"], r["source"], r["op"], r["flags"] = tid, ts, source, op, F_HAS_PAYLOAD
    for k, v in fields.items():
        r[k] = v
    return r


def test_describe_joins_payloads_to_their_event_by_tid_and_timestamp() -> None:
    sin = struct.pack("<H", socket.AF_INET) + struct.pack(">H", 8080) + socket.inet_aton("127.0.0.1") + bytes(8)
    tcp = struct.pack("<HHH", 40000, 443, socket.AF_INET) + socket.inet_aton("10.0.0.1") + socket.inet_aton("10.0.0.2") + bytes(34)
    records = np.concatenate(
        [
            _record(7, 100, Source.HOST, 5),
            _record(7, 200, Source.SYSCALL, 257),
            _record(7, 300, Source.SYSCALL, 42),
            _record(7, 400, Source.SYSCALL, 82),
            _record(8, 100, Source.TCP, 1, arg0=1),
            _record(9, 100, Source.SYSCALL, 257),  # its payload never came
        ]
    )
    payloads = [
        _payload(7, 100, PayloadKind.PATH, b"/usr/bin/cat"),
        _payload(7, 100, PayloadKind.ARGV, b"cat\0/etc/host name\0"),
        _payload(7, 200, PayloadKind.PATH, b"/etc/hostname"),
        _payload(7, 300, PayloadKind.SOCKADDR, sin),
        _payload(7, 400, PayloadKind.PATH, b"a.tmp\0a"),
        _payload(8, 100, PayloadKind.SOCKADDR, tcp),
    ]
    assert describe(records, payloads).tolist() == [
        "cat '/etc/host name'",
        "/etc/hostname",
        "127.0.0.1:8080",
        "a.tmp -> a",
        "10.0.0.1:40000 -> 10.0.0.2:443 ESTABLISHED",
        None,
    ]


def test_describe_in_bulk_keeps_plain_paths_in_place_and_resolves_timestamp_ties(tmp_path) -> None:
    # GIVEN 5,000 openat events and their paths, two threads sharing each timestamp, one path not ASCII
    n = 5000
    records = np.concatenate([_record(100 + i % 2, 1000 + i // 2, Source.SYSCALL, 257) for i in range(n)])
    pairs = [_payload(100 + i % 2, 1000 + i // 2, PayloadKind.PATH, f"/lib/{i}.so".encode()) for i in range(n)]
    pairs[7] = _payload(101, 1003, PayloadKind.PATH, "/tmp/caf\u00e9".encode())
    pairs.reverse()  # the join must not depend on order
    del pairs[10]  # the payload of the event n - 11 was lost
    details = describe(records, PayloadBatch.from_pairs(pairs))
    # THEN every event has its own path, the lost one is NULL, and plain paths point into the payload bytes
    want = [f"/lib/{i}.so" for i in range(n)]
    want[7], want[n - 11] = "/tmp/caf\u00e9", None
    assert details.tolist() == want
    assert (details.lengths >= 0).sum() == n - 1
    # AND the C bulk insert stores them as is
    conn = sqlite3.connect(tmp_path / "t.db")
    conn.execute("CREATE TABLE t(a INTEGER, b INTEGER, detail TEXT)")
    rows = np.arange(2 * n, dtype=np.int64).reshape(n, 2)
    assert fastsql.insert_i64_text(conn, "INSERT INTO t(a, b, detail) VALUES (?, ?, ?)", rows, details.text, details.offsets, details.lengths)
    assert [d for (d,) in conn.execute("SELECT detail FROM t ORDER BY a")] == want


def test_sockaddr_text_covers_ipv6_and_abstract_unix() -> None:
    sin6 = struct.pack("<H", socket.AF_INET6) + struct.pack(">H", 443) + bytes(4) + socket.inet_pton(socket.AF_INET6, "::1") + bytes(4)
    assert sockaddr_text(sin6) == "[::1]:443"
    assert sockaddr_text(struct.pack("<H", socket.AF_UNIX) + b"\0mcp\0") == "@mcp"
    assert sockaddr_text(struct.pack("<H", socket.AF_UNIX) + b"/run/x.sock\0") == "/run/x.sock"
    v6 = struct.pack("<HHH", 1, 2, socket.AF_INET6) + bytes(8) + socket.inet_pton(socket.AF_INET6, "fe80::1") + socket.inet_pton(socket.AF_INET6, "::2")
    assert tcp_retransmit_text(v6, 2) == "[fe80::1]:1 -> [::2]:2 SYN_SENT"


def test_syscall_table_matches_the_x86_64_abi_and_names_every_op() -> None:
    assert (syscall_nr("read"), syscall_nr("openat"), syscall_nr("connect"), syscall_nr("clone3")) == (0, 257, 42, 435)
    assert syscall_name(59) == "execve" and syscall_name(9999) == "syscall_9999"
    rows = syscall_ops()
    assert len(rows) == len(SYSCALL_NAMES) >= 360
    assert all(r[0] == Source.SYSCALL for r in rows)
    assert (8, 257, "openat") in {r[:3] for r in rows}


def test_host_h_op_ids_match_the_python_registry() -> None:
    defines = dict(re.findall(r"#define (\w+_OP_\w+) (\d+)", (BPF / "host.h").read_text()))
    source = {"HOST": Source.HOST, "IO": Source.IO, "TCP": Source.TCP, "NET": Source.NET}
    for name, value in defines.items():
        prefix, _, rest = name.partition("_OP_")
        info = op_info(source[prefix], int(value))
        assert info is not None, name
        expected = {"IO": "block_" + rest.lower(), "TCP": "tcp_retransmit", "NET": "net_" + rest.lower()}.get(prefix, rest.lower())
        assert info.name == expected, (name, info.name)


def _probe() -> int:
    a = 1
    b = a + 1  # line +2
    return b


def test_location_table_decoding_agrees_with_the_interpreter() -> None:
    # GIVEN this interpreter's own code objects (3.11+ location table format)
    version = 300 + sys.version_info.minor
    for fn in (_probe, test_describe_joins_payloads_to_their_event_by_tid_and_timestamp, describe):
        code = fn.__code__
        # THEN every instruction's line is the one CPython itself reports
        for start, _, line in code.co_lines():
            if line is not None:
                assert line_for(version, code.co_linetable, code.co_firstlineno, start) == line


def test_python_310_line_table() -> None:
    # (sdelta, ldelta) pairs: 4 bytes on +1, 6 bytes without a line, 2 bytes on +2 from there
    table = bytes([4, 1, 6, 0x80, 2, 2])
    assert [line_for(310, table, 10, a) for a in (0, 3, 4, 9, 10, 11, 12)] == [11, 11, None, None, 13, 13, None]


def test_elf_symbols_name_every_libc_function_including_indirect_ones() -> None:
    # GIVEN libc, whose string functions (memchr, strlen ...) are GNU indirect functions (STT_GNU_IFUNC,
    # which pyelftools calls STT_LOOS), and pyelftools' own reading of its .dynsym as the reference
    libc = next(p for p in Path("/proc/self/maps").read_text().split() if "/libc.so" in p)
    names_at: dict[int, set[str]] = defaultdict(set)
    sizes: dict[int, int] = {}
    with open(libc, "rb") as f:
        for sym in ELFFile(f).get_section_by_name(".dynsym").iter_symbols():
            if sym["st_info"]["type"] in ("STT_FUNC", "STT_LOOS") and sym["st_shndx"] != "SHN_UNDEF" and sym["st_value"]:
                names_at[sym["st_value"]].add(sym.name)
                sizes[sym["st_value"]] = sym["st_size"]
    syms = ElfSymbols(libc)
    # THEN every function is named at its address and at its last byte, indirect ones included
    assert len(names_at) > 1000
    last = {a: a + max(sizes[a] - 1, 0) for a in names_at}
    assert {a for a, names in names_at.items() if syms.lookup(a) not in names or syms.lookup(last[a]) not in names} == set()
    memchr = next(a for a, names in names_at.items() if "memchr" in names)
    assert syms.lookup(memchr + 1) == "memchr"


def test_a_line_table_cut_short_gives_no_line_not_an_error() -> None:
    # GIVEN a 3.11+ table read from a live process whose code object was freed meanwhile:
    # a long-form entry (code 14) whose varints are missing
    assert line_for(311, bytes([0xF0]), 10, 0) is None
    assert line_for(312, bytes([0xF0, 0x41]), 10, 0) is None
