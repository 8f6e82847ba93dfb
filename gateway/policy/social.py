"""Social proof: a key's energy per request next to its team's median.

Kept in memory, per gateway process, over the last ``window`` requests of each team: a
rough, recent picture is all a nudge needs, and it costs nothing when the policy is off.
"""

from __future__ import annotations

import statistics
from collections import deque


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
