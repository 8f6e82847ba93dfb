"""The open intervals: what each new interval tells, laid over the time it happened in.

Intervals stay open ``horizon_s`` (the book's) so that what is learnt late still lands where it
happened: the meter's energy over the span it was used in, the prompts the backend counts back
over their prefill, a streaming request's prompt where the backend's count of it was (the
**Prefill** paragraph of the package's docstring), and the tokens our streaming requests were
seen to generate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from gateway.energy.attribution.records import Interval, OpenInterval, Spread, Track
from gateway.energy.coefficients import TokenCosts, context_sum


class Timeline:
    """One backend's open intervals, oldest first, and its recent prompt counts spread over them."""

    def __init__(self) -> None:
        self.open: deque[OpenInterval] = deque()
        self.spreads: deque[Spread] = deque(maxlen=8)  # recent counted prompts
        self.count_lag_s = 0.25  # a first byte this long after a count may belong to it

    def open_interval(self, iv: Interval) -> OpenInterval:
        """Open the next interval and lay the energy the meter read."""
        op = OpenInterval(iv)
        self.open.append(op)
        self._lay_energy(iv)
        return op

    def closing(self, until: float | None = None) -> Iterator[OpenInterval]:
        """Take off the open intervals that end by ``until`` (None: all of them), oldest first."""
        while self.open and (until is None or self.open[0].iv.t1 <= until):
            yield self.open.popleft()

    def place_counted_prompts(self, iv: Interval, tracks: list[Track], costs: TokenCosts) -> None:
        """Retime the prompts the backend counted in ``iv``; place our streaming ones among them."""
        # streaming requests whose first token came in this interval: their prompts were counted now
        firsts = [t for t in tracks if t.stream and t.prompt_placed is None and not t.drained and not t.final
                  and t.ctx.first_byte is not None and t.ctx.first_byte <= iv.t1]  # fmt: skip
        self._retime_counted_prompts(iv, costs, firsts)
        for track in firsts:
            self._place_prompt(track, _first_byte(track), costs)

    def note_stream(self, op: OpenInterval, track: Track, batch: float, costs: TokenCosts) -> None:
        """A streaming request's progress into the newest interval: its prompt, if it ended before
        the prompt was placed, and the tokens it generated since the previous interval."""
        ctx = track.ctx
        if track.prompt_placed is None and ctx.first_byte is not None and track.ended:
            self._place_prompt(track, min(ctx.first_byte, op.iv.t1), costs)
        seen = track.gen_tokens_now()
        if seen > track.gen_seen:
            prompt = track.prompt_placed or 0.0
            ctx_sum = context_sum(int(prompt), track.gen_seen, seen)
            step, token = costs.decode_parts(batch, seen - track.gen_seen, ctx_sum)
            op.add(track, step, token, gen=seen - track.gen_seen, ctx_sum=ctx_sum)
            track.gen_seen = seen

    def _spread(self, start: float, end: float) -> list[tuple[OpenInterval, float]]:
        """The open intervals covering [start, end] with the fraction of it each holds."""
        start = max(start, self.open[0].iv.t0)
        parts = []
        if end > start:
            for op in self.open:
                overlap = min(op.iv.t1, end) - max(op.iv.t0, start)
                if overlap > 0:
                    parts.append((op, overlap / (end - start)))
        return parts or [(self.open[-1], 1.0)]

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
        targets: list[OpenInterval] = []
        for op in reversed(self.open):
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
        self.spreads.append(Spread(iv.t0, iv.t1, counted, parts))

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
        for spread in reversed(self.spreads):
            if spread.t1 < first_byte - self.count_lag_s or spread.t1 <= track.sent:
                break
            if spread.t0 < first_byte + 1e-3 and spread.left >= prompt - 0.5:
                spread.left -= prompt
                open_ops = {id(op) for op in self.open}
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


def _first_byte(track: Track) -> float:
    """When a streaming request's first byte came (only asked of tracks that have one)."""
    first = track.ctx.first_byte
    return first if first is not None else track.sent
