"""Social proof: a key's energy per request next to its team's median.

Kept in memory over the last ``window`` requests of each team: a rough, recent picture is all a
nudge needs, and it costs nothing when the policy is off. One gateway process sees only its own
requests; with several replicas sharing a PostgreSQL ledger, ``refresh`` replaces each team's
window with the team's last requests in the ledger (every replica's) every few seconds, so a
key is compared with its whole team wherever its requests land.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import deque
from typing import Protocol

log = logging.getLogger("gateway.policy")

REFRESH_S = 5.0  # how often the windows are read back from a shared ledger
HORIZON_S = 86400.0  # requests older than this never count


class SharedHistory(Protocol):
    """The shared ledger's view: a team's last answered requests, oldest first, as (key, joules)."""

    def recent(self, team: str, window: int, since: float) -> list[tuple[str, float]]: ...


class SocialWindow:
    def __init__(self) -> None:
        self._teams: dict[str, deque[tuple[str, float]]] = {}

    def observe(self, team: str, key: str, wh: float, window: int, min_samples: int) -> tuple[float, float] | None:
        """Record one request; return (the key's mean Wh, the team's median Wh) once both have enough samples."""
        recent = self._teams.get(team)
        if recent is None or recent.maxlen != window:  # new team, or the policy changed the window
            recent = self._teams[team] = deque(recent or (), maxlen=window)
        recent.append((key, wh))
        if len(recent) < min_samples:
            return None
        mine = [w for k, w in recent if k == key]
        if len(mine) < min_samples:
            return None
        return sum(mine) / len(mine), statistics.median(w for _, w in recent)

    def refresh(self, history: SharedHistory, now: float | None = None) -> None:
        """Replace the window of every team seen here with its last requests in the shared ledger
        (blocking: call it off the event loop)."""
        since = (time.time() if now is None else now) - HORIZON_S
        for team, current in list(self._teams.items()):
            window = current.maxlen or len(current)
            rows = history.recent(team, window, since)
            if rows:  # an empty ledger (just started, or away) keeps what this process saw
                self._teams[team] = deque(((key, joules / 3600.0) for key, joules in rows), maxlen=window)

    async def keep_shared(self, history: SharedHistory, interval_s: float = REFRESH_S) -> None:
        """Refresh from the shared ledger every ``interval_s`` until cancelled; a failed read is
        logged and retried at the next interval (the windows keep their last picture)."""
        while True:
            await asyncio.sleep(interval_s)
            if not self._teams:
                continue
            try:
                await asyncio.to_thread(self.refresh, history)
            except Exception as exc:  # noqa: BLE001 - the database away must not end the loop
                log.warning("social proof: cannot read the shared ledger (%s); keeping the last picture", exc)
