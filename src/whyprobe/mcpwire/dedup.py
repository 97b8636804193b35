"""Each message once, though both ends may be traced.

When both processes on a pipe or socket are enrolled, the writer's write and the reader's read
carry the same bytes. Sightings are matched per connection: same leading bytes (digest of the
first 4 KiB, so a writer's capped copy still matches the reader's), opposite sides, different
processes. Matching is first-in-first-out, the order a pipe or socket delivers in, so two
identical notifications in a row still count twice. Stream offsets are not used: the two ends
start counting wherever tracing began for each, which differ when attaching mid-session.
"""

from __future__ import annotations

import hashlib
from collections import deque

from whyprobe.mcpwire.message import McpMessage

_PREFIX = 4096


def digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw[:_PREFIX], digest_size=12).digest()


class Deduplicator:
    def __init__(self, max_pending: int = 4096) -> None:
        self.max_pending = max_pending
        self._seen: dict[str, deque[tuple[bytes, bool, int, McpMessage]]] = {}
        self._count: dict[str, dict[bytes, int]] = {}  # per connection: sightings held per digest
        self.duplicates = 0

    def match(self, conn: str, key: bytes, write: bool, pid: int) -> McpMessage | None:
        """The message this sighting repeats, or None (then `add` it)."""
        if not self._count.get(conn, {}).get(key):
            return None  # the common case, without scanning
        seen = self._seen[conn]
        for i, (k, w, p, msg) in enumerate(seen):
            if k == key and w != write and p != pid:
                # Older sightings from that end can no longer be matched: a stream keeps its order.
                kept = [e for j, e in enumerate(seen) if j > i or not (e[1] == w and e[2] == p)]
                for e in seen:
                    if e not in kept:
                        self._forget(conn, e[0])
                seen.clear()
                seen.extend(kept)
                self.duplicates += 1
                return msg
        return None

    def _forget(self, conn: str, key: bytes) -> None:
        counts = self._count[conn]
        counts[key] -= 1
        if not counts[key]:
            del counts[key]

    def add(self, conn: str, key: bytes, write: bool, pid: int, msg: McpMessage) -> None:
        seen = self._seen.setdefault(conn, deque())
        if len(seen) >= self.max_pending:
            self._forget(conn, seen.popleft()[0])
        seen.append((key, write, pid, msg))
        counts = self._count.setdefault(conn, {})
        counts[key] = counts.get(key, 0) + 1
