"""Closing an interval: its energy split between the work done in it.

The **Work**, **Calibration**, **Others** and **Idle** paragraphs of the package's docstring:
every token of the interval is weighed by the calibrated token-cost model, ours from what the
timeline laid into the interval and the others' from the backend's counters, and the energy is
split in proportion. An interval with nothing counted is idle, or carries its energy forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from gateway.energy.attribution.books import Books
from gateway.energy.attribution.records import Closed, Interval, OpenInterval, Track
from gateway.energy.coefficients import DEFAULT_CONTEXT, TokenCosts
from gateway.energy.estimators import Balance, Calibration

PRICE_FADE_S = 1800.0  # a price measured this long ago counts 1/e (Splitter.k_now, Splitter.learn_k)


@dataclass(slots=True)
class _Weighed:
    """An interval's work, calibrated (ours per request is in ``Share.work``)."""

    others_prompt: float  # the others' tokens
    others_gen: float
    others_work: float  # modelled joules
    total: float  # ours and the others'
    quiet: float  # sequences running at the quieter end of the interval
    clean: bool  # measured, busy throughout, nothing carried into it: a data point


class Splitter:
    """Splits one backend's closed intervals, and keeps what carries from one to the next.

    That is the others' token balances, the calibration of the work weights, the price of work
    in busy intervals (``k``), the idle power, and energy waiting for a busy interval: that of
    intervals whose work was not counted yet, and idle energy to amortise.
    """

    def __init__(
        self,
        costs: Callable[[], TokenCosts],
        books: Books,
        gpus: int,
        *,
        amortise_idle: bool,
        calibrate: bool,
        max_carry_s: float,
    ) -> None:
        self.costs = costs
        self.books = books
        self.gpus = gpus
        self.amortise_idle = amortise_idle
        self.max_carry_s = max_carry_s
        self.calibration = Calibration()
        self.calibrate = calibrate  # learn the work weights from the meter (off: the model's as they are)
        self.prompts = Balance()  # the others' tokens
        self.gens = Balance()
        self._carry = 0.0
        self._carry_since: float | None = None
        self._idle_pool = 0.0
        self._k_num = 0.0  # measured / modelled in busy intervals, decayed: prices provisional values, idle edges
        self._k_den = 0.0
        self.k_at: float | None = None  # when k last learnt from a busy interval (the sampler's clock)
        self._idle_w = 0.0  # the backend's power with nothing running, learnt from idle intervals

    @property
    def k(self) -> float:
        return self._k_num / self._k_den if self._k_den > 0 else 1.0

    def k_now(self, now: float) -> float:
        """``k`` for choosing between deployments at ``now`` (the sampler's clock): it fades back to
        1, the token-cost model as it is, as the last busy interval it was learnt from ages (1/e
        after PRICE_FADE_S). A deployment the router stopped choosing on an old measurement comes
        back to its modelled price and is measured again, rather than keeping that price forever."""
        return 1.0 + (self.k - 1.0) * self._kept(now) if self.k_at is not None else 1.0

    def _kept(self, t: float) -> float:
        """What is left at ``t`` of the measurements up to ``k_at`` (1 with none yet)."""
        return math.exp(-max(0.0, t - self.k_at) / PRICE_FADE_S) if self.k_at is not None else 1.0

    @property
    def carried_j(self) -> float:
        return self._carry + self._idle_pool

    def close(self, op: OpenInterval, tracks: list[Track]) -> None:
        """Split a closed interval's energy between our requests in it and the others; keep its record."""
        costs = self.costs()
        iv = op.iv
        rec = op.rec = self._record(op)
        if iv.prompt_tokens is None or iv.gen_tokens is None:
            self._unsplit(op, rec)
        else:
            weighed = self._weigh(op, rec, iv.prompt_tokens, iv.gen_tokens, costs)
            if weighed.total <= 0:
                self._no_work(iv, rec)
            else:
                energy = self._price(iv, rec, weighed, costs)
                self._shape(op, rec, weighed.others_prompt, weighed.others_gen, tracks)
                self._share_out(op, rec, energy, weighed.total)
        self.books.append(rec)

    def flush_carried(self, measured: bool) -> None:
        """Shutdown: the energy still carried becomes other."""
        if self._carry or self._idle_pool:
            self.books.book_other(self._carry + self._idle_pool, measured=measured)
            self._carry = self._idle_pool = 0.0

    def ours_after_all(self, prompt: float, gen: float) -> None:
        """Tokens counted as others' were a request's of ours (its usage, settled at its end)."""
        self.prompts.relabel(prompt)
        self.gens.relabel(gen)

    def _record(self, op: OpenInterval) -> Closed:
        """Book the interval's energy and our tokens in it as closed; what it keeps for claims."""
        iv = op.iv
        self.books.total_j += op.joules
        for track, share in op.ours.items():
            track.p_closed += share.prompt
            track.g_closed += share.gen
        return Closed(iv.t0, iv.t1, op.joules, max(1.0, iv.batch), iv.prompt_tokens is not None, iv.measured)

    def _unsplit(self, op: OpenInterval, rec: Closed) -> None:
        # Counters unknown: no way to split. Our work is estimated, the energy is other.
        for track, share in op.ours.items():
            track.est_joules += share.step + share.token + share.prefill
        self.books.book_other(rec.joules, measured=op.iv.measured, rec=rec)

    def _weigh(self, op: OpenInterval, rec: Closed, counted_p: float, counted_g: float, costs: TokenCosts) -> _Weighed:
        """Our work and the others' (the backend's count less ours), calibrated; a clean interval
        teaches the calibration first."""
        iv = op.iv
        energy = rec.joules
        ours_p = sum(s.prompt for s in op.ours.values())
        ours_g = sum(s.gen for s in op.ours.values())
        others_p = self.prompts.step(counted_p, ours_p)
        others_g = self.gens.step(counted_g, ours_g)
        context = op.ctx_sum / ours_g if ours_g else DEFAULT_CONTEXT
        o_step, o_token = costs.decode_parts(rec.batch, others_g, others_g * context)
        o_prefill = costs.prefill(1.0, DEFAULT_CONTEXT / 2) * others_p
        parts = (
            o_step + sum(s.step for s in op.ours.values()),
            o_token + sum(s.token for s in op.ours.values()),
            o_prefill + sum(s.prefill for s in op.ours.values()),
        )
        quiet = 2.0 * iv.batch - iv.running  # sequences running at the quieter end of the interval
        clean = iv.measured and energy > 0 and not self._carry and not self._idle_pool and quiet > 0
        if self.calibrate and clean and sum(parts) > 0:
            self.calibration.update(energy, parts)
        fs, ft, fp = rec.factors = self.calibration.factors
        for share in op.ours.values():
            share.work = fs * share.step + ft * share.token + fp * share.prefill
        others_work = fs * o_step + ft * o_token + fp * o_prefill
        ours_work = sum(s.work for s in op.ours.values())
        return _Weighed(others_p, others_g, others_work, ours_work + others_work, quiet, clean)

    def _no_work(self, iv: Interval, rec: Closed) -> None:
        """Nothing counted to split by: busy, the energy waits for the work; else it is idle."""
        energy = rec.joules
        if iv.running > 0:  # busy, nothing counted yet: the work shows up later
            self._carry += energy
            if self._carry_since is None:
                self._carry_since = iv.t0
            elif iv.t1 - self._carry_since > self.max_carry_s:
                self.books.book_other(self._carry, measured=iv.measured, rec=rec)
                self._carry, self._carry_since = 0.0, None
        else:
            if iv.measured and iv.t1 > iv.t0:
                watts = energy / (iv.t1 - iv.t0)
                self._idle_w = 0.9 * self._idle_w + 0.1 * watts if self._idle_w else watts
            self._book_idle(energy, _source(iv))

    def _price(self, iv: Interval, rec: Closed, weighed: _Weighed, costs: TokenCosts) -> float:
        """The energy to split (less an idle edge, plus what was carried into it) and its price."""
        energy = rec.joules
        total = weighed.total
        if weighed.quiet <= 0 and iv.measured and self._k_den > 0:
            # Nothing ran at one end: part of the interval was idle. The work is priced at what
            # it costs in busy intervals; the rest, up to idle power, is idle, not the work's.
            idle_w = self._idle_w or costs.idle_w
            idle = min(energy - min(energy, self.k * total), idle_w * (iv.t1 - iv.t0))
            if idle > 0:
                energy -= idle
                rec.joules = energy
                self._book_idle(idle, _source(iv))

        energy += self._carry + self._idle_pool
        self._carry = self._idle_pool = 0.0
        self._carry_since = None
        rec.price = energy / total
        rec.others_work = weighed.others_work
        rec.joules = energy
        if weighed.clean:
            self.learn_k(energy, total, iv.t1)
        return energy

    def learn_k(self, energy: float, total: float, t: float) -> None:
        """A clean interval ending at ``t``: ``energy`` measured for ``total`` modelled. Each one
        keeps 0.98 of what came before, less what faded since the last (as ``k_now``), so that
        after a long gap the new measurements outweigh the old at once."""
        keep = 0.98 * self._kept(t)
        self._k_num = self._k_num * keep + energy
        self._k_den = self._k_den * keep + total
        self.k_at = t

    def _shape(
        self, op: OpenInterval, rec: Closed, others_prompt: float, others_gen: float, tracks: list[Track]
    ) -> None:
        """Remember where each request's tokens were made, for settling at its end.

        A streaming request's generated tokens are the ones we saw. A unary request in flight
        gets its share of the others' generated tokens: one sequence's worth of what the backend
        made for sequences we did not see (running minus our streaming ones), never more than
        the others' tokens divided among our unary requests; and it notes the others' prompt
        tokens, its own prompt being among the first counted after it was sent.
        """
        iv = op.iv
        decoding = 0
        for track, share in op.ours.items():
            if share.gen > 0:
                track.shape.append((rec, share.gen))
                decoding += 1
        if others_gen <= 0 and others_prompt <= 0:
            return
        unary = [
            t for t in tracks
            if not t.stream and not t.final and t.sent < iv.t1 and (t.finished is None or t.finished > iv.t0)
        ]  # fmt: skip
        each = others_gen / max(1.0, iv.running - decoding, len(unary)) if unary else 0.0
        for track in unary:
            if each > 0:
                track.shape.append((rec, each))
            if others_prompt > 0:
                track.pshape.append((rec, others_prompt))

    def _share_out(self, op: OpenInterval, rec: Closed, energy: float, total: float) -> None:
        """Each request of ours gets the price of its work; the rest is other, to be claimed."""
        iv = op.iv
        gpu_s = (iv.t1 - iv.t0) * self.gpus
        attributed = 0.0
        for track, share in op.ours.items():
            joules = rec.price * share.work
            attributed += joules
            track.credit(joules, iv.measured)
            track.gpu_s += gpu_s * share.work / total
        self.books.attribute(attributed, _source(iv))
        self.books.book_other(energy - attributed, measured=iv.measured, rec=rec)

    def _book_idle(self, joules: float, source: str) -> None:
        if self.amortise_idle:
            self._idle_pool += joules
        else:
            self.books.book_idle(joules, source)


def _source(iv: Interval) -> str:
    return "measured" if iv.measured else "estimated"
