"""The wire family: MCP bytes over pipes, unix/TCP sockets and TLS (OpenSSL), into the payload ring.

Syscall tracepoints see stdio and plain HTTP; TLS plaintext only exists inside
the process, so SSL_read/SSL_write(_ex) are probed in every file the targets
run that defines them: libssl, and executables that carry OpenSSL (or
BoringSSL) themselves: node links it statically and exports the symbols, so do
electron apps and other static builds. The launched command's executable is
probed before it runs; files mapped later (an exec, a dlopen) at the next tick.
SSL_do_handshake, SSL_set_bio, SSL_free and BIO_write (libcrypto's, or the
static build's own) bind each SSL* to its TCP connection (wire.bpf.c), so a TLS
message carries the same connection id at both ends and is reported once.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from whyprobe.errors import WhyprobeError
from whyprobe.kernel.elfsym import lookup
from whyprobe.kernel.libbpf import BpfError
from whyprobe.kernel.loader import ProbeSet
from whyprobe.probes.base import TargetSpec
from whyprobe.probes.libs import command_executables, ldconfig_cache, mapped_files

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
TLS_SYMBOLS = (*SSL_ENTRY, *SSL_BINDING, *BIO_BINDING)


def startup_candidates(command: list[str] = ()) -> list[str]:
    """Files to probe before the targets run: the command's executable (and its `#!` interpreter)
    and what processes most often start using late: the system's libssl/libcrypto (loaded with a
    TLS module) and the `node` on PATH (an agent starts npx servers and node clients at any time)."""
    found = command_executables(list(command)) if command else []
    found += [path for soname, path in ldconfig_cache() if soname.startswith(("libssl.so", "libcrypto.so"))]
    found += command_executables(["node"])
    return found


def mapped_candidates(pids: list[int], skip: set[str] = frozenset()) -> list[str]:
    """Every file these processes map executable, but those in `skip`."""
    return [p for pid in pids for p in mapped_files(pid) if p not in skip and not p.endswith(" (deleted)")]


class WireFamily:
    name = "wire"

    def __init__(self, *, max_message_bytes: int = 1 << 20, sniff: bool = False, tls: bool = True) -> None:
        self.max_message_bytes = max_message_bytes
        self.sniff = sniff
        self.tls = tls
        self.tls_libraries: list[str] = []
        self._examined: set[str] = set()
        self._cryptos: dict[str, int] = {}  # libcrypto -> BIO_write offset, probed once TLS is
        self._obj = None

    def attach(self, probes: ProbeSet, targets: TargetSpec) -> list[str]:
        obj = probes.open("wire")
        obj.set_rodata(max_message_bytes=self.max_message_bytes, sniff=int(self.sniff))
        obj.load()
        for prog in SYSCALL_PROGRAMS:
            obj.attach(prog)
        self._obj = obj
        if not self.tls:
            return []
        return self.attach_tls(startup_candidates(targets.command) + mapped_candidates(targets.pids))

    def tick(self, pids: list[int]) -> list[str]:
        """Files the targets mapped since (an exec into node, a dlopen'd libssl)."""
        return self.attach_tls(mapped_candidates(pids, self._examined)) if self.tls else []

    def attach_tls(self, paths: list[str]) -> list[str]:
        """Probe OpenSSL in every one of these files that defines SSL_read and SSL_write (each file
        is looked at once, under every name it is reached by)."""
        warnings = []
        for name in dict.fromkeys(paths):
            if name in self._examined:
                continue
            path = os.path.realpath(name)  # libssl.so and libssl.so.3 are often one file
            seen = path in self._examined
            self._examined.update((name, path))
            if seen or not os.path.isfile(path):
                continue
            try:
                offsets = lookup(path, TLS_SYMBOLS)
            except WhyprobeError as exc:  # unreadable or non-ELF file in the maps: not ours to fail on
                log.info("skip %s: %s", path, exc)
                continue
            if not {"SSL_read", "SSL_write"} <= offsets.keys():
                if "BIO_write" in offsets and "libcrypto" in Path(path).name:
                    self._cryptos[path] = offsets["BIO_write"]
                continue
            try:
                self._attach_ssl(path, offsets)
            except BpfError as exc:
                warnings.append(f"TLS capture unavailable in {path}: {exc}")
        if self.tls_libraries:
            # BIO_write binds memory-BIO TLS to its socket; without it the thread's reads decide.
            for path, off in list(self._cryptos.items()):
                del self._cryptos[path]
                try:
                    self._obj.attach_uprobe_multi(BIO_BINDING["BIO_write"], path, [off])
                except BpfError as exc:
                    log.info("no BIO_write probe in %s: %s", path, exc)
        return warnings

    def _attach_ssl(self, path: str, offsets: dict[str, int]) -> None:
        io = [off for sym, off in offsets.items() if sym in SSL_ENTRY]
        for sym, off in offsets.items():  # a static build carries its own BIO_write too
            self._obj.attach_uprobe_multi({**SSL_ENTRY, **SSL_BINDING, **BIO_BINDING}[sym], path, [off])
        self._obj.attach_uprobe_multi("handle_ssl_ret", path, io, retprobe=True)
        if "SSL_do_handshake" in offsets:
            self._obj.attach_uprobe_multi("handle_ssl_handshake_ret", path, [offsets["SSL_do_handshake"]], retprobe=True)
        self.tls_libraries.append(path)

    def on_batch(self, records: np.ndarray) -> None:
        return None

    def finish(self, probes: ProbeSet, writer: object) -> None:
        return None
