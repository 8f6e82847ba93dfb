"""Split each interval's measured energy between the requests that ran on the backend.

The sampler hands a backend's ``Book`` one ``Interval`` per tick: ``[t0, t1)``, the energy the
meter measured in it, and the backend's own token counters over it (``vllm:prompt_tokens_total``,
``vllm:generation_tokens_total``, ``vllm:num_requests_running``). The book knows our requests on
that backend and how far each got (``ctx.gen_tokens_seen``, ``ctx.first_byte``).

**Work.** Every token processed in the interval is weighed by the joules the token-cost model
predicts for it (``coefficients.TokenCosts``), in three parts: a generated token's share of
the step (the weights streamed once for the whole batch the backend reports), its own cost
(compute, and reading its KV cache: more for a long context), and a prompt token's share of a
compute-bound prefill. With an 8B model a prompt token weighs ~5 % of a generated one at batch
8 and ~24 % at batch 64 (the step is shared by more sequences); the model is fitted on
ML.ENERGY v3 and the H200 probe in FACTS.md (see coefficients.py). The measured energy is
then split in proportion:

    E_request = E x work_request / (work_ours + work_others)

**Calibration.** The model is an extrapolation for models and GPUs other than those measured,
so each busy interval is also a data point for a least-squares fit of what the three parts
really cost on this backend (``estimators.Calibration``, pulled towards the model, bounded to 1/4..4);
the split uses the calibrated weights.

**Others.** The denominator comes from the backend's counters, so tokens we did not see (other
gateway replicas, direct clients, our own non-streaming requests until they end) are "other"
work and take their share. Others' tokens are the backend's count minus ours, kept as a running
balance with a high-water mark so that a token counted by the backend one tick before our proxy
relays it is not charged twice (``estimators.Balance``).

**Idle.** An interval in which nothing ran is idle energy: reported for the backend, never
charged to a request (``amortise_idle`` spreads it over the next busy interval instead). An
interval with sequences running but no token counted yet (a long prefill) carries its energy
into the next interval that has work.

**Prefill.** vLLM counts a prompt when its prefill ends, but the energy was spent before: the
prompts the backend counts are spread back over their predicted prefill time (intervals stay
open ``horizon_s`` for that), and a streaming request's prompt is placed where the backend's
count of it was, found by its first byte.

**Non-streaming requests** only know their totals at the end: their work is "other" while they
run. Each interval notes, for every unary request in flight, one sequence's share of the
others' generated tokens and the others' prompt tokens; at the end the request's usage is laid
out in that shape (its prompt first come, first served) and it claims that work's price from
the other energy of those intervals, up to what is there, then at most its share of what is
left in its lifetime. Streaming requests settle the same way any difference between what they
were seen to do and the usage the backend reported (e.g. several tokens in one event).

**Conservation.** Every joule of every interval lands in exactly one of attributed, idle and
other (claims move other to attributed), so ``attributed + idle + other + carried = measured``.

A request is final once every interval up to its end is closed and its claims are settled.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.context import RequestContext
from gateway.energy.coefficients import DEFAULT_BATCH, DEFAULT_CONTEXT, TokenCosts, context_sum
from gateway.energy.estimators import Balance, Calibration

log = logging.getLogger("gateway.energy")

RING_MARGIN_S = 60.0  # closed intervals kept before the oldest request in flight (see _finalise)


@dataclass(slots=True)
class Interval:
    t0: float
    t1: float
    joules: float  # energy of the backend's GPUs read at t1: the energy of [since, until)
    measured: bool = True  # False: the joules are an estimate (no meter, or it failed)
    prompt_tokens: float | None = 0.0  # the backend's own counters over the interval; None = unknown
    gen_tokens: float | None = 0.0
    running: float = 0.0  # most sequences running at either end
    batch: float = 0.0  # mean sequences running
    watts: float | None = None
    since: float | None = None  # the span the meter's energy covers (None: [t0, t1)); a counter
    until: float | None = None  # that moves in steps is behind the token counters read at t1


class Track:
    """One upstream attempt of one of our requests, as the book sees it."""

    __slots__ = (
        "ctx", "owner", "stream", "skip_events", "sent", "finished", "ended", "drained", "final", "forced", "usage",
        "gen_seen", "prompt_placed", "placed_at", "placed", "joules", "est_joules", "gpu_s", "p_closed", "g_closed",
        "shape", "pshape",
    )  # fmt: skip

    def __init__(self, ctx: RequestContext, sent: float, shape_limit: int | None = None) -> None:
        self.ctx = ctx
        self.owner: object = None  # whatever the service ties the attempt to
        self.stream = ctx.stream
        # Counting events (a backend without running usage), vLLM's first chat event is the role
        self.skip_events = 1 if ctx.endpoint == "chat" else 0
        self.sent = sent
        self.finished: float | None = None
        self.ended = False  # end() seen
        self.drained = False  # the progress up to the end is in an interval
        self.final = False
        self.forced = False  # made final at shutdown, before every interval up to its end was measured
        self.usage: dict | None = None
        self.gen_seen = 0  # generated tokens accounted so far
        self.prompt_placed: float | None = None  # prompt tokens placed at the first byte
        self.placed_at = 0.0  # when the prompt finished (first byte)
        self.joules = 0.0  # measured energy attributed
        self.est_joules = 0.0  # estimated energy (intervals without a meter or counters)
        self.gpu_s = 0.0  # share of the backend's GPU time
        self.p_closed = 0.0  # tokens in closed intervals (for provisional estimates)
        self.g_closed = 0.0
        # Where its generated tokens were made (or likely were), and for a unary request the
        # others' prompt tokens while it was in flight; no longer than the ring of intervals.
        self.shape: deque[tuple[Closed, float]] = deque(maxlen=shape_limit)
        self.pshape: deque[tuple[Closed, float]] = deque(maxlen=shape_limit)
        self.placed: list[tuple[_Open, float]] = []  # streaming: where its prompt was placed

    def prompt_tokens(self) -> int:
        usage = self.usage if self.usage is not None else self.ctx.usage
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            return usage["prompt_tokens"]
        return max(0, self.ctx.prompt_tokens_est or 0)

    def gen_tokens_now(self) -> int:
        # Exact when the backend sends running usage; else one event per token, after the
        # chat stream's role chunk.
        if self.ctx.gen_tokens_exact:
            return self.ctx.gen_tokens_seen
        return max(0, self.ctx.gen_tokens_seen - self.skip_events)


@dataclass(slots=True)
class _Share:
    step: float = 0.0  # modelled joules: generated tokens' share of the steps' cost
    token: float = 0.0  # generated tokens' own cost (compute, KV reads)
    prefill: float = 0.0  # prompt tokens
    prompt: float = 0.0  # tokens
    gen: float = 0.0
    work: float = 0.0  # the calibrated sum, set when the interval closes


@dataclass(slots=True)
class _Open:
    iv: Interval
    joules: float = 0.0  # the meter's energy laid over [iv.t0, iv.t1)
    ours: dict[Track, _Share] = field(default_factory=dict)
    ctx_sum: float = 0.0  # contexts of our generated tokens (for the others' average)
    rec: Closed | None = None  # once closed

    def add(self, track: Track, step: float = 0.0, token: float = 0.0, prefill: float = 0.0, prompt: float = 0.0,
            gen: float = 0.0, ctx_sum: float = 0.0) -> None:  # fmt: skip
        share = self.ours.get(track)
        if share is None:
            share = self.ours[track] = _Share()
        share.step += step
        share.token += token
        share.prefill += prefill
        share.prompt += prompt
        share.gen += gen
        self.ctx_sum += ctx_sum


@dataclass(slots=True)
class _Spread:
    """A prompt count of the backend's, spread back over its prefill."""

    t0: float  # the interval it was counted in
    t1: float
    left: float  # tokens not yet known to be one of our streaming prompts
    parts: list[tuple[_Open, float]]


@dataclass(slots=True)
class Closed:
    """What a closed interval keeps for later claims and for the 'other' metric."""

    t0: float
    t1: float
    joules: float
    batch: float
    known: bool  # the backend's counters were read: the split is a measurement
    measured: bool
    price: float = 0.0  # joules per modelled joule of work (0: nothing was split)
    factors: tuple[float, float, float] = (1.0, 1.0, 1.0)  # the calibration then (step, token, prefill)
    others_work: float = 0.0  # modelled joules of the work we did not see (others, our unary requests)
    other_left: float = 0.0  # 'other' energy nobody has claimed yet
    published: bool = False


Tally = dict[tuple[str, str], float]  # (kind, source) -> joules, for the energy metric


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
        self.gpus = gpus
        self.horizon_s = horizon_s
        self.amortise_idle = amortise_idle
        self.max_carry_s = max_carry_s
        self.max_age_s = max_age_s
        self.tracks: list[Track] = []
        self._open: deque[_Open] = deque()
        self._spreads: deque[_Spread] = deque(maxlen=8)  # recent counted prompts
        self.count_lag_s = 0.25  # a first byte this long after a count may belong to it
        self._ring: deque[Closed] = deque(maxlen=ring)
        self._unpublished: deque[Closed] = deque()
        self._prompt = Balance()
        self._gen = Balance()
        self._carry = 0.0
        self._carry_since: float | None = None
        self._idle_pool = 0.0
        self.closed_until = -math.inf
        self.measured_now = True  # the latest interval was measured
        self.batch_now = DEFAULT_BATCH
        self.calibration = Calibration()
        self.calibrate = calibrate  # learn the work weights from the meter (off: the model's as they are)
        self._k_num = 0.0  # measured / modelled in busy intervals, decayed: prices provisional values, idle edges
        self._idle_w = 0.0  # the backend's power with nothing running, learnt from idle intervals
        self._k_den = 0.0
        # conservation books (joules)
        self.total_j = 0.0  # every interval's energy, measured or estimated
        self.attributed_j = 0.0
        self.idle_j = 0.0
        self.other_j = 0.0
        self.tally: Tally = {}

    # ------------------------------------------------------------------ requests

    def begin(self, ctx: RequestContext, sent: float) -> Track:
        track = Track(ctx, sent, self._ring.maxlen)
        self.tracks.append(track)
        return track

    def end(self, track: Track, finished: float, usage: dict | None) -> None:
        track.ended = True
        track.finished = max(finished, track.sent)
        track.usage = usage if isinstance(usage, dict) else None

    @property
    def k(self) -> float:
        return self._k_num / self._k_den if self._k_den > 0 else 1.0

    @property
    def carried_j(self) -> float:
        return self._carry + self._idle_pool

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

    # ------------------------------------------------------------------ intervals

    def push(self, iv: Interval) -> list[Track]:
        """Take the next interval; returns the tracks that became final."""
        costs = self.costs()
        op = _Open(iv)
        self._open.append(op)
        self._lay_energy(iv)
        self.measured_now = iv.measured
        self.batch_now = iv.batch or self.batch_now
        batch = max(1.0, iv.batch)
        # streaming requests whose first token came in this interval: their prompts were counted now
        firsts = [t for t in self.tracks if t.stream and t.prompt_placed is None and not t.drained and not t.final
                  and t.ctx.first_byte is not None and t.ctx.first_byte <= iv.t1]  # fmt: skip
        self._retime_counted_prompts(iv, costs, firsts)
        for track in firsts:
            self._place_prompt(track, _first_byte(track), costs)
        for track in self.tracks:
            if track.drained or track.final:
                continue
            ctx = track.ctx
            if track.stream:
                if track.prompt_placed is None and ctx.first_byte is not None and track.ended:
                    self._place_prompt(track, min(ctx.first_byte, iv.t1), costs)
                seen = track.gen_tokens_now()
                if seen > track.gen_seen:
                    prompt = track.prompt_placed or 0.0
                    ctx_sum = context_sum(int(prompt), track.gen_seen, seen)
                    step, token = costs.decode_parts(batch, seen - track.gen_seen, ctx_sum)
                    op.add(track, step, token, gen=seen - track.gen_seen, ctx_sum=ctx_sum)
                    track.gen_seen = seen
            if track.ended:
                track.drained = True
            elif iv.t1 - track.sent > self.max_age_s:
                log.warning("request %s never ended; closing its energy account", ctx.request_id)
                self.end(track, iv.t1, None)
                track.drained = True
        while self._open and self._open[0].iv.t1 <= iv.t1 - self.horizon_s:
            self._close(self._open.popleft())
        return self._finalise(force=False)

    def flush(self) -> list[Track]:
        """Close everything (shutdown): carried energy becomes other; ended requests become final."""
        for track in self.tracks:
            if track.ended:
                track.drained = True  # what it did after the last interval is not measured
        while self._open:
            self._close(self._open.popleft())
        if self._carry or self._idle_pool:
            self._book_other(self._carry + self._idle_pool, known=True, measured=self.measured_now)
            self._carry = self._idle_pool = 0.0
        final = self._finalise(force=True)
        for rec in self._unpublished:
            self._publish(rec)
        self._unpublished.clear()
        return final

    def _spread(self, start: float, end: float) -> list[tuple[_Open, float]]:
        """The open intervals covering [start, end] with the fraction of it each holds."""
        start = max(start, self._open[0].iv.t0)
        parts = []
        if end > start:
            for op in self._open:
                overlap = min(op.iv.t1, end) - max(op.iv.t0, start)
                if overlap > 0:
                    parts.append((op, overlap / (end - start)))
        return parts or [(self._open[-1], 1.0)]

    def _lay_energy(self, iv: Interval) -> None:
        """Put the energy the meter read over the open intervals of the time it was used in.

        A counter that moves in steps gives, at ``t1``, the energy up to its last update
        (``until``, a little before ``t1``), since the previous one: that span at constant
        power, over the intervals it overlaps (an interval's tail gets its energy with the next
        reading). Only intervals measured alike share it; what falls before them goes to the
        first.
        """
        energy = iv.joules
        start = iv.since if iv.since is not None else iv.t0
        end = iv.until if iv.until is not None else iv.t1
        targets: list[_Open] = []
        for op in reversed(self._open):
            if op.iv.measured != iv.measured or (targets and op.iv.t1 < targets[-1].iv.t0 - 1e-9):
                break
            targets.append(op)
            if op.iv.t0 <= start:
                break
        targets.reverse()
        start = max(start, targets[0].iv.t0)
        end = min(end, iv.t1)
        if end <= start or len(targets) == 1:
            targets[-1].joules += energy
            return
        laid = 0.0
        for op in targets:
            overlap = min(op.iv.t1, end) - max(op.iv.t0, start)
            if overlap > 0:
                part = energy * overlap / (end - start)
                op.joules += part
                laid += part
        targets[-1].joules += energy - laid

    def _retime_counted_prompts(self, iv: Interval, costs: TokenCosts, firsts: list[Track]) -> None:
        """Move the prompts the backend counted now back to when they were prefilled.

        vLLM counts a prompt when its prefill completes, and sends its first token at once; the
        energy was spent over the prefill before. The count is spread over the predicted
        prefill time of all the tokens counted, ending at the latest first token of our
        streaming requests counted in it, or (without one) in the middle of the interval: the
        counter was read at its end, the prefill ended somewhere in it. The work and the energy
        so stay in the same intervals, for other clients' and our unary requests' prompts alike.
        The spread is remembered: our streaming prompts counted in it are placed the same way.
        """
        counted = iv.prompt_tokens
        if not counted or counted <= 0:
            return
        end = (iv.t0 + iv.t1) / 2.0
        ours = [t for t in firsts if _first_byte(t) > iv.t0 and t.prompt_tokens() > 0]
        if ours and sum(t.prompt_tokens() for t in ours) <= counted + 0.5:
            end = max(_first_byte(t) for t in ours)
        d = costs.prefill_seconds(counted)
        parts = [(op, f) for op, f in self._spread(end - d, end) if op.iv.prompt_tokens is not None]
        total = sum(f for _, f in parts) or 1.0
        parts = [(op, f / total) for op, f in parts]
        iv.prompt_tokens = 0.0
        for op, fraction in parts:
            op.iv.prompt_tokens = (op.iv.prompt_tokens or 0.0) + counted * fraction  # parts: known counts only
        self._spreads.append(_Spread(iv.t0, iv.t1, counted, parts))

    def _place_prompt(self, track: Track, first_byte: float, costs: TokenCosts) -> None:
        """Place a streaming request's prompt where the backend's count of it was placed.

        Its first token follows the count at once: the count read in the interval of the first
        token is its, or the one before if that one has too few tokens left (the relay took a
        moment and a read came between). Without one, the prompt goes over its predicted
        prefill time before the first token.
        """
        prompt = float(track.prompt_tokens())
        track.prompt_placed = prompt
        track.placed_at = first_byte
        if prompt <= 0:
            return
        parts = None
        for spread in reversed(self._spreads):
            if spread.t1 < first_byte - self.count_lag_s or spread.t1 <= track.sent:
                break
            if spread.t0 < first_byte + 1e-3 and spread.left >= prompt - 0.5:
                spread.left -= prompt
                open_ops = {id(op) for op in self._open}
                parts = [(op, f) for op, f in spread.parts if id(op) in open_ops]
                break
        if not parts:
            d = min(first_byte - track.sent, costs.prefill_seconds(prompt))
            parts = self._spread(first_byte - max(d, 0.0), first_byte)
        total = sum(f for _, f in parts) or 1.0
        track.placed = [(op, f / total) for op, f in parts]
        position = 0.0
        for op, fraction in track.placed:
            tokens = prompt * fraction
            op.add(track, prefill=costs.prefill(tokens, position), prompt=tokens)
            position += tokens

    def _close(self, op: _Open) -> None:
        iv = op.iv
        costs = self.costs()
        energy = op.joules
        self.total_j += energy
        ours_p = sum(s.prompt for s in op.ours.values())
        ours_g = sum(s.gen for s in op.ours.values())
        for track, share in op.ours.items():
            track.p_closed += share.prompt
            track.g_closed += share.gen
        self.closed_until = iv.t1
        rec = op.rec = Closed(iv.t0, iv.t1, energy, max(1.0, iv.batch), iv.prompt_tokens is not None, iv.measured)

        if iv.prompt_tokens is None or iv.gen_tokens is None:
            # Counters unknown: no way to split. Our work is estimated, the energy is other.
            for track, share in op.ours.items():
                track.est_joules += share.step + share.token + share.prefill
            self._book_other(energy, known=False, measured=iv.measured, rec=rec)
            self._append(rec)
            return

        others_p = self._prompt.step(iv.prompt_tokens, ours_p)
        others_g = self._gen.step(iv.gen_tokens, ours_g)
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
        total = ours_work + others_work
        source = "measured" if iv.measured else "estimated"

        if total <= 0:
            if iv.running > 0:  # busy, nothing counted yet: the work shows up later
                self._carry += energy
                if self._carry_since is None:
                    self._carry_since = iv.t0
                elif iv.t1 - self._carry_since > self.max_carry_s:
                    self._book_other(self._carry, known=True, measured=iv.measured, rec=rec)
                    self._carry, self._carry_since = 0.0, None
            else:
                if iv.measured and iv.t1 > iv.t0:
                    watts = energy / (iv.t1 - iv.t0)
                    self._idle_w = 0.9 * self._idle_w + 0.1 * watts if self._idle_w else watts
                self._book_idle(energy, source)
            self._append(rec)
            return

        if quiet <= 0 and iv.measured and self._k_den > 0:
            # Nothing ran at one end: part of the interval was idle. The work is priced at what
            # it costs in busy intervals; the rest, up to idle power, is idle, not the work's.
            idle_w = self._idle_w or costs.idle_w
            idle = min(energy - min(energy, self.k * total), idle_w * (iv.t1 - iv.t0))
            if idle > 0:
                energy -= idle
                rec.joules = energy
                self._book_idle(idle, source)

        energy += self._carry + self._idle_pool
        self._carry = self._idle_pool = 0.0
        self._carry_since = None
        price = energy / total
        rec.price = price
        rec.others_work = others_work
        rec.joules = energy
        if clean:
            self._k_num = self._k_num * 0.98 + energy
            self._k_den = self._k_den * 0.98 + total
        self._shape(op, rec, others_p, others_g)
        gpu_s = (iv.t1 - iv.t0) * self.gpus
        attributed = 0.0
        for track, share in op.ours.items():
            joules = price * share.work
            attributed += joules
            if iv.measured:
                track.joules += joules
            else:
                track.est_joules += joules
            track.gpu_s += gpu_s * share.work / total
        self.attributed_j += attributed
        self._add_tally("attributed", source, attributed)
        self._book_other(energy - attributed, known=True, measured=iv.measured, rec=rec)
        self._append(rec)

    def _shape(self, op: _Open, rec: Closed, others_prompt: float, others_gen: float) -> None:
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
            t for t in self.tracks
            if not t.stream and not t.final and t.sent < iv.t1 and (t.finished is None or t.finished > iv.t0)
        ]  # fmt: skip
        each = others_gen / max(1.0, iv.running - decoding, len(unary)) if unary else 0.0
        for track in unary:
            if each > 0:
                track.shape.append((rec, each))
            if others_prompt > 0:
                track.pshape.append((rec, others_prompt))

    def _book_idle(self, joules: float, source: str) -> None:
        if self.amortise_idle:
            self._idle_pool += joules
        else:
            self.idle_j += joules
            self._add_tally("idle", source, joules)

    def _book_other(self, joules: float, known: bool, measured: bool, rec: Closed | None = None) -> None:
        self.other_j += joules
        if rec is None:
            self._add_tally("other", "measured" if measured else "estimated", joules)
        else:
            rec.other_left += joules

    def _append(self, rec: Closed) -> None:
        if len(self._ring) == self._ring.maxlen:
            self._publish(self._ring[0])
        self._ring.append(rec)
        self._unpublished.append(rec)

    def _publish(self, rec: Closed) -> None:
        if not rec.published:
            rec.published = True
            self._add_tally("other", "measured" if rec.measured else "estimated", rec.other_left)

    def _add_tally(self, kind: str, source: str, joules: float) -> None:
        if joules:
            self.tally[(kind, source)] = self.tally.get((kind, source), 0.0) + joules

    def take_tally(self) -> Tally:
        tally, self.tally = self.tally, {}
        return tally

    # ------------------------------------------------------------------ settling

    def _finalise(self, force: bool) -> list[Track]:
        done = []
        for track in self.tracks:
            finished = track.finished if track.finished is not None else track.sent  # set by end()
            if track.ended and track.drained and (force or finished <= self.closed_until):
                track.forced = finished > self.closed_until
                self._settle(track)
                track.final = True
                done.append(track)
        if done:
            self.tracks = [t for t in self.tracks if not t.final]
        # 'other' energy is final once no request of ours that could claim it is left.
        first_sent = min((t.sent for t in self.tracks), default=math.inf)
        while self._unpublished and (self._unpublished[0].t1 <= first_sent or self._unpublished[0].published):
            self._publish(self._unpublished.popleft())
        # Closed intervals are looked up by the claims of requests still open, over their own
        # lifetimes: keep those since the oldest one began (and a margin for requests whose begin
        # is still on its way to this thread), not the ring's whole length. Memory then follows the
        # longest request in flight, not the uptime (a full ring is ~16k intervals per backend).
        keep_from = min(first_sent, self.closed_until) - RING_MARGIN_S
        ring = self._ring
        while ring and ring[0].t1 < keep_from and ring[0].published:
            ring.popleft()
        return done

    def _settle(self, track: Track) -> None:
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
        self._prompt.relabel(extra_p)
        self._gen.relabel(extra_g)

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
        for rec in reversed(self._ring):
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
            want = (rec.price or self.k) * work
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
        rec.other_left -= joules
        self.other_j -= joules
        self.attributed_j += joules
        if rec.measured:
            track.joules += joules
        else:
            track.est_joules += joules
        if rec.joules > 0:
            track.gpu_s += (rec.t1 - rec.t0) * self.gpus * joules / rec.joules
        self._add_tally("attributed", "measured" if rec.measured else "estimated", joules)


def _first_byte(track: Track) -> float:
    """When a streaming request's first byte came (only asked of tracks that have one)."""
    first = track.ctx.first_byte
    return first if first is not None else track.sent


def _count(value: object) -> int:
    return value if isinstance(value, int) else 0


def _overlap(rec: Closed, start: float, end: float) -> float:
    """Fraction of [start, end] inside the interval (a point belongs to the interval holding it)."""
    if end <= start:
        return 1.0 if rec.t0 <= start < rec.t1 else 0.0
    return max(0.0, min(rec.t1, end) - max(rec.t0, start)) / (end - start)
