"""One backend's attribution ``Book``: our requests from begin to final, and the intervals through it.

The sampler begins and ends our requests in it and pushes one interval per tick. The book lays
the interval over the open ones (``Timeline``), closes those past the horizon (``Splitter``),
and makes final the requests whose intervals are all closed, once settled (``Settler``); the
``Books`` holds where every joule went.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable

from gateway.context import DEFERRED_TIERS, RequestContext
from gateway.energy.attribution.books import Books
from gateway.energy.attribution.records import Closed, Interval, OpenInterval, Tally, Track
from gateway.energy.attribution.settle import Settler
from gateway.energy.attribution.split import Splitter
from gateway.energy.attribution.timeline import Timeline
from gateway.energy.coefficients import DEFAULT_BATCH, TokenCosts

log = logging.getLogger("gateway.energy")

INTERACTIVE_TAU_S = 300.0  # the interactive batch is averaged over about this long
RING_MARGIN_S = 60.0  # closed intervals kept before the oldest request in flight (see _finalise)


class Book:
    """The attribution state of one backend. Used by one thread (its sampler)."""

    def __init__(
        self,
        costs: Callable[[], TokenCosts],
        gpus: int = 1,
        *,
        horizon_s: float = 2.0,
        ring: int = 16384,
        amortise_idle: bool = False,
        calibrate: bool = True,
        max_carry_s: float = 10.0,
        max_age_s: float = 3600.0,
    ) -> None:
        self.costs = costs
        self.horizon_s = horizon_s
        self.max_age_s = max_age_s
        self.tracks: list[Track] = []
        self.closed_until = -math.inf
        self.measured_now = True  # the latest interval was measured
        self.batch_now = DEFAULT_BATCH
        # Sequences x seconds and seconds of the busy intervals in which none of our deferred
        # (flex, batch) requests ran, both fading over ~INTERACTIVE_TAU_S (interactive).
        self._interactive = (0.0, 0.0)
        self._ring: deque[Closed] = deque(maxlen=ring)  # closed intervals, for the claims of requests open
        self.timeline = Timeline()
        self.books = Books(self._ring)
        self.splitter = Splitter(
            costs, self.books, gpus, amortise_idle=amortise_idle, calibrate=calibrate, max_carry_s=max_carry_s
        )
        self.settler = Settler(costs, gpus, self._ring, self.books, self.splitter)

    # ------------------------------------------------------------------ requests

    def begin(self, ctx: RequestContext, sent: float) -> Track:
        track = Track(ctx, sent, self._ring.maxlen)
        self.tracks.append(track)
        return track

    def end(self, track: Track, finished: float, usage: dict | None) -> None:
        track.ended = True
        track.finished = max(finished, track.sent)
        track.usage = usage if isinstance(usage, dict) else None

    def provisional(self, track: Track) -> tuple[float, bool]:
        """(joules so far plus an estimate of what is still open, estimated?)."""
        costs = self.costs()
        prompt = track.prompt_tokens()
        usage = track.usage if track.usage is not None else track.ctx.usage
        gen = track.gen_tokens_now()
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            gen = usage["completion_tokens"]
        pending_p = max(0.0, prompt - track.p_closed)
        pending_g = max(0.0, gen - track.g_closed)
        work = costs.prefill(pending_p) + costs.decode(self.batch_now, prompt + gen) * pending_g
        estimated = track.est_joules > 0 or not self.measured_now
        return track.joules + track.est_joules + self.k * work, estimated

    @property
    def interactive(self) -> tuple[float, float]:
        """The batch interactive requests run in here, as (sequences x seconds, seconds) of the
        backend's busy intervals without deferred requests of ours, fading over about
        INTERACTIVE_TAU_S of wall time: their ratio is the mean batch. What batching saves is
        priced against it, pooled over the model's replicas (``EnergyService._interactive_batch``)."""
        return self._interactive

    # ------------------------------------------------------------------ the books

    @property
    def k(self) -> float:
        """Measured joules per modelled joule of work in busy intervals (1 before any)."""
        return self.splitter.k

    def k_now(self, now: float) -> float:
        """``k`` faded back to 1 as its measurements age (``Splitter.k_now``): what the router
        compares deployments by."""
        return self.splitter.k_now(now)

    @property
    def total_j(self) -> float:
        return self.books.total_j

    @property
    def attributed_j(self) -> float:
        return self.books.attributed_j

    @property
    def idle_j(self) -> float:
        return self.books.idle_j

    @property
    def other_j(self) -> float:
        return self.books.other_j

    @property
    def carried_j(self) -> float:
        return self.splitter.carried_j

    def take_tally(self) -> Tally:
        return self.books.take_tally()

    # ------------------------------------------------------------------ intervals

    def push(self, iv: Interval) -> list[Track]:
        """Take the next interval; returns the tracks that became final."""
        costs = self.costs()
        op = self.timeline.open_interval(iv)
        self.measured_now = iv.measured
        self.batch_now = iv.batch or self.batch_now
        batch = max(1.0, iv.batch)
        self.timeline.place_counted_prompts(iv, self.tracks, costs)
        dt = iv.t1 - iv.t0
        busy = iv.batch > 0 and dt > 0
        deferred = False
        for track in self.tracks:
            if track.drained or track.final:
                continue
            if busy:
                track.batch_s += iv.batch * dt
                track.busy_s += dt
            deferred = deferred or track.ctx.service_tier in DEFERRED_TIERS
            if track.stream:
                self.timeline.note_stream(op, track, batch, costs)
            if track.ended:
                track.drained = True
            elif iv.t1 - track.sent > self.max_age_s:
                log.warning("request %s never ended; closing its energy account", track.ctx.request_id)
                self.end(track, iv.t1, None)
                track.drained = True
        if dt > 0:  # a time-weighted mean that forgets over ~TAU of wall time, busy or not: pooled
            # over replicas (EnergyService._interactive_batch), one that stopped serving interactive
            # requests fades out rather than weighing in with its old batch
            decay = math.exp(-dt / INTERACTIVE_TAU_S)
            add = dt if busy and not deferred else 0.0
            self._interactive = (self._interactive[0] * decay + iv.batch * add, self._interactive[1] * decay + add)
        for closing in self.timeline.closing(until=iv.t1 - self.horizon_s):
            self._close(closing)
        return self._finalise(force=False)

    def flush(self) -> list[Track]:
        """Close everything (shutdown): carried energy becomes other; ended requests become final."""
        for track in self.tracks:
            if track.ended:
                track.drained = True  # what it did after the last interval is not measured
        for op in self.timeline.closing():
            self._close(op)
        self.splitter.flush_carried(self.measured_now)
        final = self._finalise(force=True)
        self.books.publish_all()
        return final

    def _close(self, op: OpenInterval) -> None:
        self.closed_until = op.iv.t1
        self.splitter.close(op, self.tracks)

    # ------------------------------------------------------------------ settling

    def _finalise(self, force: bool) -> list[Track]:
        done = []
        for track in self.tracks:
            finished = track.finished if track.finished is not None else track.sent  # set by end()
            if track.ended and track.drained and (force or finished <= self.closed_until):
                track.forced = finished > self.closed_until
                self.settler.settle(track)
                track.final = True
                done.append(track)
        if done:
            self.tracks = [t for t in self.tracks if not t.final]
        # 'other' energy is final once no request of ours that could claim it is left.
        first_sent = min((t.sent for t in self.tracks), default=math.inf)
        self.books.publish_before(first_sent)
        # Closed intervals are looked up by the claims of requests still open, over their own
        # lifetimes: keep those since the oldest one began (and a margin for requests whose begin
        # is still on its way to this thread), not the ring's whole length. Memory then follows the
        # longest request in flight, not the uptime (a full ring is ~16k intervals per backend).
        keep_from = min(first_sent, self.closed_until) - RING_MARGIN_S
        ring = self._ring
        while ring and ring[0].t1 < keep_from and ring[0].published:
            ring.popleft()
        return done
