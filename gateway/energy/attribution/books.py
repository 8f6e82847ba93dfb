"""Where every joule lands (the **Conservation** paragraph of the package's docstring).

Every interval's energy is booked once: attributed to our requests, idle, or other (the splitter
carries some into the next busy interval first); claims move other to attributed. An interval's
other energy stays claimable (``Closed.other_left``) until no request of ours that could claim it
is left, and only then goes into the tally for the energy metric.
"""

from __future__ import annotations

from collections import deque

from gateway.energy.attribution.records import Closed, Tally


class Books:
    """The conservation books of one backend and the tally not yet taken for the metric."""

    def __init__(self, ring: deque[Closed]) -> None:
        self.ring = ring  # closed intervals kept for claims (the book lets go of the old ones)
        self.unpublished: deque[Closed] = deque()  # closed intervals whose other energy may still be claimed
        self.total_j = 0.0  # every interval's energy, measured or estimated
        self.attributed_j = 0.0
        self.idle_j = 0.0
        self.other_j = 0.0
        self.tally: Tally = {}

    def attribute(self, joules: float, source: str) -> None:
        self.attributed_j += joules
        self._add_tally("attributed", source, joules)

    def book_idle(self, joules: float, source: str) -> None:
        self.idle_j += joules
        self._add_tally("idle", source, joules)

    def book_other(self, joules: float, measured: bool, rec: Closed | None = None) -> None:
        self.other_j += joules
        if rec is None:
            self._add_tally("other", "measured" if measured else "estimated", joules)
        else:
            rec.other_left += joules

    def claim(self, rec: Closed, joules: float) -> None:
        """Move ``joules`` of the interval's other energy to attributed (a request's claim)."""
        rec.other_left -= joules
        self.other_j -= joules
        self.attributed_j += joules
        self._add_tally("attributed", "measured" if rec.measured else "estimated", joules)

    def append(self, rec: Closed) -> None:
        if len(self.ring) == self.ring.maxlen:
            self.publish(self.ring[0])
        self.ring.append(rec)
        self.unpublished.append(rec)

    def publish_before(self, first_sent: float) -> None:
        """Publish the other energy of the intervals no request still open can claim."""
        while self.unpublished and (self.unpublished[0].t1 <= first_sent or self.unpublished[0].published):
            self.publish(self.unpublished.popleft())

    def publish_all(self) -> None:
        for rec in self.unpublished:
            self.publish(rec)
        self.unpublished.clear()

    def publish(self, rec: Closed) -> None:
        if not rec.published:
            rec.published = True
            self._add_tally("other", "measured" if rec.measured else "estimated", rec.other_left)

    def take_tally(self) -> Tally:
        tally, self.tally = self.tally, {}
        return tally

    def _add_tally(self, kind: str, source: str, joules: float) -> None:
        if joules:
            self.tally[(kind, source)] = self.tally.get((kind, source), 0.0) + joules
