"""Event details (paths, argv, addresses) joined to their events, and what was lost on the way.

Producers submit a payload before its event, so a payload was drained in the
same round as its event or the one before (if it landed between the session's
two ring reads); older unmatched payloads belong to dropped events and are let
go. An event whose payload never came (payloads ring full) is stored without
detail and flagged F_DETAIL_LOST, so a query can tell "no detail" from "no event".
"""

from __future__ import annotations

import numpy as np

from whyprobe.events import F_DETAIL_LOST, F_HAS_PAYLOAD, Details, PayloadKind
from whyprobe.kernel.ring import PayloadBatch
from whyprobe.probes.host import describe  # the host families own the text of paths, argv and addresses

DETAIL_KINDS = (PayloadKind.PATH, PayloadKind.ARGV, PayloadKind.SOCKADDR, PayloadKind.SYMBOL)


class DetailJoiner:
    """Keeps the detail payloads of the last two drains; joins them to each batch of events."""

    def __init__(self) -> None:
        self._pending: list[PayloadBatch] = []
        self.details_lost = 0

    def take(self, payloads: PayloadBatch) -> None:
        detail = np.isin(payloads.hdr["kind"], DETAIL_KINDS)
        if detail.any():
            self._pending.append(payloads.select(detail))

    def idle(self) -> None:
        """A drain without events: only this round's payloads can still meet theirs."""
        self._pending = self._pending[-1:]

    def join(self, records: np.ndarray, rows: np.ndarray) -> Details | None:
        """`detail` of each event flagged WP_F_HAS_PAYLOAD; flags the ones that lost it in `rows`."""
        pending, self._pending = self._pending, self._pending[-1:]
        want = (records["flags"] & F_HAS_PAYLOAD) != 0
        if not want.any():
            return None
        details = describe(records, PayloadBatch.concat(pending))
        lost = want & (details.lengths < 0)
        if lost.any():
            rows["flags"][lost] |= F_DETAIL_LOST
            self.details_lost += int(lost.sum())
        return details if (details.lengths >= 0).any() else None


def drops_where(by_family: dict, by_cpu: dict, key: str) -> str:
    """Where `key` ("events" or "payloads") losses happened: 'syscalls 12, proc 3; cpu0 10, cpu1 5'."""
    fams = ", ".join(f"{f} {c[key]:,}" for f, c in sorted(by_family.items()) if c.get(key))
    cpus = ", ".join(f"cpu{n} {c[key]:,}" for n, c in sorted(by_cpu.items(), key=lambda x: int(x[0])) if c.get(key))
    return "; ".join(p for p in (fams, cpus) if p)
