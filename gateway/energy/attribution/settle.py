"""Settling a request at its end: claiming the work it did that the intervals did not see.

The **Non-streaming requests** paragraph of the package's docstring: a unary request's work was
'other' while it ran; at its end its usage is laid out where it was (likely) done, and it claims
that work's price from the other energy of those intervals. A streaming request settles the
same way what its usage says beyond what it was seen to do.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from gateway.energy.attribution.books import Books
from gateway.energy.attribution.records import Closed, Track
from gateway.energy.attribution.split import Splitter
from gateway.energy.coefficients import TokenCosts


class Settler:
    """Settles one backend's requests against its closed intervals (the ring, newest last)."""

    def __init__(
        self, costs: Callable[[], TokenCosts], gpus: int, ring: deque[Closed], books: Books, splitter: Splitter
    ) -> None:
        self.costs = costs
        self.gpus = gpus
        self.ring = ring
        self.books = books
        self.splitter = splitter  # its price of work, and its balances of the others' tokens

    def settle(self, track: Track) -> None:
        """Claim what the request did that the intervals did not see; fix the balances."""
        usage = track.usage
        if usage is None:
            return
        costs = self.costs()
        prompt = _count(usage.get("prompt_tokens"))
        gen = _count(usage.get("completion_tokens"))
        finished = track.finished if track.finished is not None else track.sent
        if track.stream and track.prompt_placed is not None:
            extra_p = prompt - track.prompt_placed
            pf_end = track.placed_at
            pf_start = pf_end - min(pf_end - track.sent, costs.prefill_seconds(prompt))
        else:  # no first byte seen: all of the prompt, at the start
            extra_p = prompt
            pf_start = track.sent
            pf_end = track.sent + min((finished - track.sent) / 2.0, costs.prefill_seconds(prompt))
        extra_g = gen - track.gen_seen

        claims: list[tuple[Closed, float]] = []  # (interval, modelled joules of our work in it)
        if extra_p > 0:
            position = float(prompt - extra_p)
            for rec, tokens in self._prompt_shape(track, extra_p, pf_start, pf_end):
                claims.append((rec, rec.factors[2] * costs.prefill(tokens, position)))
                position += tokens
        if extra_g > 0:
            # Where the tokens were made: in proportion to the request's own tokens per interval
            # (streaming) or to its share of the others' tokens while it ran (unary); else evenly.
            shape = [(rec, n) for rec, n in track.shape if n > 0 and not rec.published]
            if not shape:
                shape = self._closed_over(pf_end, finished)
            total = sum(n for _, n in shape)
            done = float(track.gen_seen)
            for rec, n in shape:
                tokens = extra_g * n / total
                step, token = costs.decode_parts(rec.batch, tokens, tokens * (prompt + done + tokens / 2.0))
                claims.append((rec, rec.factors[0] * step + rec.factors[1] * token))
                done += tokens
        if claims:
            self._claim(track, claims, track.sent, finished)
        track.shape.clear()
        track.pshape.clear()
        track.placed = []
        self.splitter.ours_after_all(extra_p, extra_g)

    def _prompt_shape(self, track: Track, tokens: float, start: float, end: float) -> list[tuple[Closed, float]]:
        """Where ``tokens`` prompt tokens of the request were prefilled: (interval, tokens).

        A streaming request's prompt goes where its first byte placed it. A unary request's is
        taken first come, first served from the others' prompt tokens counted after it was
        sent (vLLM prefills in arrival order). What is left goes evenly over [start, end].
        """
        out: list[tuple[Closed, float]] = []
        if track.placed:
            for op, fraction in track.placed:
                if op.rec is not None and not op.rec.published:
                    out.append((op.rec, tokens * fraction))
            return out or [(rec, tokens * f) for rec, f in self._closed_over(start, end)]
        left = tokens
        for rec, counted in track.pshape:
            if left <= 0:
                break
            if not rec.published:
                take = min(counted, left)
                out.append((rec, take))
                left -= take
        if left > 0:
            out += [(rec, left * f) for rec, f in self._closed_over(start, end)]
        return out

    def _closed_over(self, start: float, end: float) -> list[tuple[Closed, float]]:
        """Closed intervals covering [start, end] and the fraction of it each holds."""
        out = []
        for rec in reversed(self.ring):
            if rec.t1 <= start and not (end <= start and rec.t0 <= start < rec.t1):
                break
            fraction = _overlap(rec, start, end)
            if fraction > 0 and not rec.published:
                out.append((rec, fraction))
        return out[::-1]

    def _claim(self, track: Track, claims: list[tuple[Closed, float]], start: float, end: float) -> None:
        """Take the request's share of the other energy of the intervals its work fell in.

        Pass 1 takes, interval by interval, the work's price up to the other energy there.
        Pass 2 fills what is still missing from other energy left over in the request's
        lifetime, but never more than the request's share of the others' work there: the rest
        may belong to another unary request still running, or to another client.
        """
        missing = 0.0
        for rec, work in claims:
            if not rec.known:
                track.est_joules += work
                continue
            want = (rec.price or self.splitter.k) * work
            take = min(want, rec.other_left)
            missing += want - take
            if take > 0:
                self._take(track, rec, take)
        if missing <= 0:
            return
        mine = sum(work for rec, work in claims if rec.known)
        pool = [rec for rec, _ in self._closed_over(start, end) if rec.known]
        theirs = sum(rec.others_work for rec in pool)
        left = sum(rec.other_left for rec in pool if rec.other_left > 0)
        if left > 0:
            ratio = min(missing / left, mine / theirs if theirs > mine else 1.0)
            for rec in pool:
                if rec.other_left > 0:
                    self._take(track, rec, rec.other_left * ratio)

    def _take(self, track: Track, rec: Closed, joules: float) -> None:
        self.books.claim(rec, joules)
        track.credit(joules, rec.measured)
        if rec.joules > 0:
            track.gpu_s += (rec.t1 - rec.t0) * self.gpus * joules / rec.joules


def _count(value: object) -> int:
    return value if isinstance(value, int) else 0


def _overlap(rec: Closed, start: float, end: float) -> float:
    """Fraction of [start, end] inside the interval (a point belongs to the interval holding it)."""
    if end <= start:
        return 1.0 if rec.t0 <= start < rec.t1 else 0.0
    return max(0.0, min(rec.t1, end) - max(rec.t0, start)) / (end - start)
