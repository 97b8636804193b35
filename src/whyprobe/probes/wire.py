"""The wire family: MCP bytes over pipes, unix/TCP sockets and TLS (OpenSSL), into the payload ring.

Syscall tracepoints see stdio and plain HTTP; TLS plaintext only exists inside
the process, so SSL_read/SSL_write(_ex) are probed in every libssl the targets
map, and in executables that carry OpenSSL themselves (node links it statically
and exports the symbols). SSL_do_handshake, SSL_set_bio, SSL_free and
libcrypto's BIO_write bind each SSL* to its TCP connection (wire.bpf.c), so a
TLS message carries the same connection id at both ends and is reported once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from whyprobe.errors import WhyprobeError
from whyprobe.kernel.elfsym import resolve
from whyprobe.kernel.libbpf import BpfError
from whyprobe.kernel.loader import ProbeSet
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.libs import ldconfig_cache, mapped_files

log = logging.getLogger(__name__)

SYSCALL_PROGRAMS = [
    f"handle_{d}_{s}"
    for s in ("read", "write", "readv", "writev", "sendto", "recvfrom", "sendmsg", "recvmsg")
    for d in ("enter", "exit")
]
SSL_ENTRY = {
    "SSL_write": "handle_ssl_write",
    "SSL_read": "handle_ssl_read",
    "SSL_write_ex": "handle_ssl_write_ex",
    "SSL_read_ex": "handle_ssl_read_ex",
}
# Name TLS streams by their TCP connection (wire.bpf.c ssl_conns): optional, where present.
SSL_BINDING = {
    "SSL_do_handshake": "handle_ssl_handshake",
    "SSL_set_bio": "handle_ssl_set_bio",
    "SSL_free": "handle_ssl_free",
}
BIO_BINDING = {"BIO_write": "handle_bio_write"}  # libcrypto, or the executable that carries OpenSSL


def tls_candidates(pids: list[int], stem: str = "libssl.so") -> list[str]:
    """Files that may hold OpenSSL for these processes: their `stem` maps (libssl, libcrypto), the
    system's, and their executables (node links OpenSSL statically)."""
    found: list[str] = []
    for pid in pids:
        found += [f for f in mapped_files(pid) if stem in Path(f).name]
        try:
            found.append(str(Path(f"/proc/{pid}/exe").resolve()))
        except OSError:
            pass
    found += [path for soname, path in ldconfig_cache() if stem in soname]
    # One path per file: libssl.so and libssl.so.3 are often the same file.
    return list(dict.fromkeys(os.path.realpath(p) for p in found if Path(p).exists()))


class WireFamily:
    name = "wire"

    def __init__(self, *, max_message_bytes: int = 1 << 20, sniff: bool = False, tls: bool = True) -> None:
        self.max_message_bytes = max_message_bytes
        self.sniff = sniff
        self.tls = tls
        self.tls_libraries: list[str] = []
        self._bio_files: set[str] = set()
        self._obj = None

    def attach(self, probes: ProbeSet, targets: TargetSpec) -> list[str]:
        obj = probes.open("wire")
        obj.set_rodata(max_message_bytes=self.max_message_bytes, sniff=int(self.sniff))
        obj.load()
        for prog in SYSCALL_PROGRAMS:
            obj.attach(prog)
        self._obj = obj
        return self.attach_tls(targets.pids) if self.tls else []

    def attach_tls(self, pids: list[int]) -> list[str]:
        """Probe OpenSSL in the given processes' libraries (call again for processes seen later)."""
        warnings = []
        for path in tls_candidates(pids):
            warnings += self._attach_ssl(path)
        if self.tls_libraries:
            self._attach_bio(tls_candidates(pids, "libcrypto.so"))
        return warnings

    def _attach_ssl(self, path: str) -> list[str]:
        if path in self.tls_libraries:
            return []
        try:
            offsets, _ = resolve(path, [*SSL_ENTRY, *SSL_BINDING])
        except WhyprobeError as exc:  # unreadable or non-ELF file in the maps: not ours to fail on
            log.info("skip %s: %s", path, exc)
            return []
        if not {"SSL_read", "SSL_write"} <= offsets.keys():
            return []
        try:
            io = {sym: off for sym, off in offsets.items() if sym in SSL_ENTRY}
            for sym, off in offsets.items():
                self._obj.attach_uprobe_multi({**SSL_ENTRY, **SSL_BINDING}[sym], path, [off])
            self._obj.attach_uprobe_multi("handle_ssl_ret", path, list(io.values()), retprobe=True)
            if "SSL_do_handshake" in offsets:
                self._obj.attach_uprobe_multi("handle_ssl_handshake_ret", path, [offsets["SSL_do_handshake"]], retprobe=True)
            self.tls_libraries.append(path)
        except BpfError as exc:
            return [f"TLS capture unavailable in {path}: {exc}"]
        return []

    def held_libraries(self) -> list[str]:
        """libssl (and libcrypto, for BIO_write) loaded late are probed before their first call."""
        return ["libssl.so", "libcrypto.so"] if self.tls else []

    def on_library(self, pid: int, path: str) -> list[str]:
        """A target opened `path` and waits until this returns (record/follow.py)."""
        if self._obj is None or not self.tls:
            return []
        path = os.path.realpath(path)
        name = Path(path).name
        if "libssl.so" in name:
            return self._attach_ssl(path)
        if "libcrypto.so" in name:
            self._attach_bio([path])
        return []

    def _attach_bio(self, paths: list[str]) -> None:
        """BIO_write binds memory-BIO TLS to its socket; without it the thread's reads decide."""
        for path in paths:
            if path in self._bio_files:
                continue
            self._bio_files.add(path)
            try:
                offsets, _ = resolve(path, list(BIO_BINDING))
                for sym, off in offsets.items():
                    self._obj.attach_uprobe_multi(BIO_BINDING[sym], path, [off])
            except WhyprobeError as exc:  # BpfError included
                log.info("no BIO_write probe in %s: %s", path, exc)

    def on_batch(self, records: np.ndarray) -> None:
        return None

    def finish(self, probes: ProbeSet, writer: object) -> None:
        return None
