"""What the attribution book keeps: the intervals it is handed, our requests, and what an
interval holds while it is open (work laid into it) and once it is closed (for later claims)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from gateway.context import RequestContext


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
        "shape", "pshape", "batch_s", "busy_s",
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
        self.placed: list[tuple[OpenInterval, float]] = []  # streaming: where its prompt was placed
        self.batch_s = 0.0  # sequences running on the backend, times seconds, while it ran
        self.busy_s = 0.0  # ... and those seconds: batch_s / busy_s is the batch it ran in

    def prompt_tokens(self) -> int:
        usage = self.usage if self.usage is not None else self.ctx.usage
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            return usage["prompt_tokens"]
        return max(0, self.ctx.prompt_tokens or self.ctx.prompt_tokens_est or 0)  # vLLM's count once known

    def gen_tokens_now(self) -> int:
        # Exact when the backend sends running usage; else one event per token, after the
        # chat stream's role chunk.
        if self.ctx.gen_tokens_exact:
            return self.ctx.gen_tokens_seen
        return max(0, self.ctx.gen_tokens_seen - self.skip_events)

    def credit(self, joules: float, measured: bool) -> None:
        """Add energy attributed to the request: measured, or an estimate."""
        if measured:
            self.joules += joules
        else:
            self.est_joules += joules


@dataclass(slots=True)
class Share:
    """One request's work in one open interval."""

    step: float = 0.0  # modelled joules: generated tokens' share of the steps' cost
    token: float = 0.0  # generated tokens' own cost (compute, KV reads)
    prefill: float = 0.0  # prompt tokens
    prompt: float = 0.0  # tokens
    gen: float = 0.0
    work: float = 0.0  # the calibrated sum, set when the interval closes


@dataclass(slots=True)
class OpenInterval:
    """An interval still open (``horizon_s``): energy and our work are still laid into it."""

    iv: Interval
    joules: float = 0.0  # the meter's energy laid over [iv.t0, iv.t1)
    ours: dict[Track, Share] = field(default_factory=dict)
    ctx_sum: float = 0.0  # contexts of our generated tokens (for the others' average)
    rec: Closed | None = None  # once closed

    def add(self, track: Track, step: float = 0.0, token: float = 0.0, prefill: float = 0.0, prompt: float = 0.0,
            gen: float = 0.0, ctx_sum: float = 0.0) -> None:  # fmt: skip
        share = self.ours.get(track)
        if share is None:
            share = self.ours[track] = Share()
        share.step += step
        share.token += token
        share.prefill += prefill
        share.prompt += prompt
        share.gen += gen
        self.ctx_sum += ctx_sum


@dataclass(slots=True)
class Spread:
    """A prompt count of the backend's, spread back over its prefill."""

    t0: float  # the interval it was counted in
    t1: float
    left: float  # tokens not yet known to be one of our streaming prompts
    parts: list[tuple[OpenInterval, float]]


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
