"""The energy subsystem as the app sees it: begin, end, and a final report later.

    service = EnergyService(config.backends, catalog.params_b, metrics, recorder.final)
    service.start()                   # one sampler thread per backend
    service.begin(ctx)                # an upstream attempt was sent to ctx.backend
    service.abandon(ctx)              # that attempt failed before any answer (a retry may follow)
    report = service.end(ctx)         # the answer is complete: provisional joules, at once
    ...                               # later, from a sampler thread: ctx.energy = final; on_final(ctx)
    service.stop()                    # joins the threads, finalises what is pending

``end`` never blocks: it reads what the sampler has published and prices what is still open
with the backend's recent measured/modelled ratio. The final value (source ``measured``, or
``estimated`` when any of it came from the estimate) is set once the sampler has closed every
interval up to the request's end, and ``on_final(ctx)`` is called from the sampler's thread.
Every request that ``end`` was called for reaches ``on_final`` exactly once, also after
``stop`` (then immediately, with its provisional value).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial

from gateway.config import BackendConfig
from gateway.context import DEFERRED_TIERS, EnergyReport, RequestContext
from gateway.energy.attribution.book import Book
from gateway.energy.attribution.records import Interval, Track
from gateway.energy.coefficients import BUSY_W, DEFAULT_BATCH, TokenCosts
from gateway.energy.costs import energy_report
from gateway.energy.counterfactual import ReasoningLengths
from gateway.energy.meters import make_meter
from gateway.energy.ratings import EnergyRatings
from gateway.energy.sampler import BackendSampler
from gateway.telemetry.metrics import Metrics

log = logging.getLogger("gateway.energy")

TOKENS_PER_JOULE_WINDOW_S = 60.0


class _Entry:
    """One request: its attempts' tracks, and whether it ended."""

    __slots__ = ("ctx", "tracks", "books", "attempts", "finals", "ended", "done")

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.tracks: list[Track] = []  # appended by sampler threads
        self.books: list[Book] = []
        self.attempts = 0  # attempts a sampler took
        self.finals = 0  # of those, final
        self.ended = False
        self.done = False


class EnergyService:
    def __init__(
        self,
        backends: list[BackendConfig],
        params_b: Callable[[str], float | None],
        metrics: Metrics,
        on_final: Callable[[RequestContext], None],
        *,
        weight_bits: Callable[[str], float] | None = None,
        amortise_idle: bool = False,
        horizon_s: float = 2.0,
    ) -> None:
        self.backends = {b.name: b for b in backends}
        self.params_b = params_b
        self.weight_bits = weight_bits or _bf16  # a model's weight precision, in bits (gateway/precision.py)
        self.ratings = EnergyRatings()  # Wh per 1,000 answers of each model, and its stars
        self.metrics = metrics
        self.on_final = on_final
        self._lock = threading.Lock()
        self._entries: dict[int, _Entry] = {}
        self._costs: dict[tuple, TokenCosts] = {}
        self._last_model: dict[str, str] = {}
        self._tpj: dict[str, _Window] = {}  # per backend, touched by its sampler thread only
        self.reasoning = ReasoningLengths()  # what thinking costs here, for the reasoning-off credit
        self.samplers: dict[str, BackendSampler] = {}
        for b in backends:
            costs = partial(self.costs, b.name)
            book = Book(costs, b.gpus, horizon_s=horizon_s, amortise_idle=amortise_idle)
            self.samplers[b.name] = BackendSampler(
                b, make_meter(b, costs), book, costs, self._tracks_final, self._interval
            )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        # Every backend's split exists from the start, at 0: series born at different moments
        # make rate() extrapolate differently, and attributed + idle + other would not add up.
        for sampler in self.samplers.values():
            source = "measured" if sampler.meter.measured else "estimated"
            for kind in ("attributed", "idle", "other"):
                self.metrics.energy.labels(sampler.name, kind, source).inc(0)
            sampler.start()

    def stop(self) -> None:
        """Stop the samplers; every request that ended is finalised (provisional if need be)."""
        for sampler in self.samplers.values():
            sampler.stop()
        with self._lock:
            leftover = [e for e in self._entries.values() if e.ended and not e.done]
        for entry in leftover:
            self._complete(entry)

    # ------------------------------------------------------------------ the request path

    def begin(self, ctx: RequestContext) -> None:
        """An upstream attempt was sent (``ctx.backend``, ``ctx.model``, ``ctx.sent`` are set)."""
        name = ctx.backend or ""
        if ctx.model:
            self._last_model[name] = ctx.model
        with self._lock:
            entry = self._entries.get(id(ctx))
            if entry is None:
                entry = self._entries[id(ctx)] = _Entry(ctx)
            sampler = self.samplers.get(name)
            if sampler is not None and sampler.submit(("begin", ctx, entry, time.monotonic())):
                entry.attempts += 1

    def abandon(self, ctx: RequestContext) -> None:
        """The attempt on ``ctx.backend`` failed before answering; another may follow."""
        entry = self._entries.get(id(ctx))
        sampler = self.samplers.get(ctx.backend or "")
        if entry is not None and sampler is not None:
            sampler.submit(("abandon", ctx, entry, time.monotonic()))

    def end(self, ctx: RequestContext) -> EnergyReport:
        """The response is complete (or failed): the provisional report, without blocking."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(id(ctx))
            if entry is None:
                entry = self._entries[id(ctx)] = _Entry(ctx)
            first = not entry.ended
            entry.ended = True
            settled = entry.finals >= entry.attempts  # every attempt already final (or none taken)
        report = self._provisional(entry)
        ctx.energy = report
        if not first:
            return report
        sampler = self.samplers.get(ctx.backend or "")
        if not settled and sampler is not None and sampler.submit(("end", ctx, entry, now)):
            return report
        # Nothing left for a sampler to finish (no attempt taken, all abandoned, or the
        # samplers are stopped): final now.
        self._complete(entry)
        return ctx.energy

    def counterfactual_joules(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """What these tokens would have cost on ``model`` (priced on a backend serving it if any)."""
        for name, sampler in self.samplers.items():
            if self._serves(name, model):
                book = sampler.book
                return book.k * self.costs(name, model).request(prompt_tokens, completion_tokens, book.batch_now)
        return self._unplaced(model).request(prompt_tokens, completion_tokens, DEFAULT_BATCH)

    def _serves(self, name: str, model: str) -> bool:
        """Whether backend ``name`` serves ``model`` (configured, discovered, or last seen answering)."""
        return model in self.backends[name].models or model in self.samplers[name].models or (
            self._last_model.get(name) == model
        )

    def _interactive_batch(self, model: str) -> float | None:
        """The batch interactive requests for ``model`` run in here: pooled over the backends
        serving it, weighted by busy time (with several replicas the deferred work packs onto one
        and interactive requests run on the others); None before any."""
        batch_s = busy_s = 0.0
        for name, sampler in self.samplers.items():
            if self._serves(name, model):
                b, s = sampler.book.interactive
                batch_s, busy_s = batch_s + b, busy_s + s
        return batch_s / busy_s if busy_s > 0 else None

    def _unplaced(self, model: str | None) -> TokenCosts:
        """Token costs of ``model`` on no backend we know (a single H200, the defaults)."""
        return TokenCosts(self.params_b(model) if model else None, weight_bits=self._bits(model))

    def backend_power_watts(self, name: str) -> float | None:
        """The GPUs' power now, as measured (None with the estimate or no recent reading)."""
        sampler = self.samplers.get(name)
        if sampler is None or not sampler.meter.measured or sampler.reading is None:
            return None
        if time.monotonic() - sampler.reading.t > 5.0:
            return None
        return sampler.reading.watts

    # ------------------------------------------------------------------ token costs

    def costs(self, name: str, model: str | None = None) -> TokenCosts:
        """Token costs of ``model`` (default: the one backend ``name`` serves) on that backend."""
        backend = self.backends[name]
        if model is None:
            model = self._served_model(name)
        params = self.params_b(model) if model else None
        bits = self._bits(model)
        key = (name, model, params, bits)
        costs = self._costs.get(key)
        if costs is None:
            costs = self._costs[key] = TokenCosts(params, backend.gpus, backend.gpu, bits)
        return costs

    def _bits(self, model: str | None) -> float:
        return self.weight_bits(model) if model else 16.0

    def expected_j_per_token(self, model: str) -> float | None:
        """What a generated token of ``model`` costs here, as measured: the token-cost model's price
        at the batch ML.ENERGY's smallest runs had, times the measured/modelled ratio of the
        cheapest backend serving it (what the router compares deployments of equal ability by),
        faded back to the model's price as the measurement ages (``Book.k_now``). None when no
        backend is known to serve it."""
        now = time.monotonic()
        prices = [
            sampler.book.k_now(now) * self.costs(name, model).decode(DEFAULT_BATCH)
            for name, sampler in self.samplers.items()
            if self._serves(name, model)
        ]
        return min(prices) if prices else None

    def _served_model(self, name: str) -> str | None:
        sampler = self.samplers.get(name)
        served = self.backends[name].models or (sampler.models if sampler is not None else [])
        return served[0] if served else self._last_model.get(name)

    # ------------------------------------------------------------------ reports

    def _provisional(self, entry: _Entry) -> EnergyReport:
        ctx = entry.ctx
        joules, gpu_s, estimated = 0.0, 0.0, False
        for track, book in zip(list(entry.tracks), list(entry.books)):
            j, est = book.provisional(track)
            joules += j
            gpu_s += track.gpu_s
            estimated = estimated or est
        if not entry.tracks:  # the sampler has not seen it yet (or never will)
            usage = ctx.usage if isinstance(ctx.usage, dict) else {}
            prompt = usage.get("prompt_tokens") or ctx.prompt_tokens or ctx.prompt_tokens_est or 0
            gen = usage.get("completion_tokens") or ctx.gen_tokens_seen or 0
            sampler = self.samplers.get(ctx.backend or "")
            if sampler is not None:
                book = sampler.book
                costs = self.costs(sampler.name, ctx.model or None)
                joules = book.k * costs.request(prompt, gen, book.batch_now)
                estimated = not (book.measured_now and sampler.meter.measured)
            else:
                joules = self._unplaced(ctx.model or None).request(prompt, gen)
                estimated = True
        backend = self.backends.get(ctx.backend or "")
        if not gpu_s:
            gpu_s = joules / BUSY_W
        return energy_report(joules, "estimated" if estimated else "measured-provisional", gpu_s, backend)

    def _tracks_final(self, tracks: list[Track]) -> None:
        """From a sampler thread: these attempts are final; complete the requests that are done."""
        complete = []
        with self._lock:
            for track in tracks:
                entry = track.owner
                if not isinstance(entry, _Entry):
                    continue
                entry.finals += 1
                if entry.ended and entry.finals >= entry.attempts and not entry.done:
                    complete.append(entry)
        for entry in complete:
            self._complete(entry)

    def _complete(self, entry: _Entry) -> None:
        with self._lock:
            if entry.done:
                return
            entry.done = True
            self._entries.pop(id(entry.ctx), None)
        ctx = entry.ctx
        tracks = list(entry.tracks)
        if tracks and all(t.final for t in tracks):
            joules = sum(t.joules + t.est_joules for t in tracks)
            gpu_s = sum(t.gpu_s for t in tracks)
            if any(t.est_joules > 0 or (not t.joules and not b.measured_now) for t, b in zip(tracks, entry.books)):
                source = "estimated"
            elif any(t.forced for t in tracks):
                source = "measured-provisional"
            else:
                source = "measured"
            report = energy_report(joules, source, gpu_s or joules / BUSY_W, self.backends.get(ctx.backend or ""))
        else:  # finalised before the sampler could: keep the provisional value, labelled as such
            report = self._provisional(entry)
        ctx.energy = report
        answered = self.samplers.get(ctx.backend or "")
        batched = _batched(ctx, tracks, list(entry.books), answered.book if answered is not None else None,
                           self._interactive_batch)  # fmt: skip
        # The entry and its tracks point at each other (track.owner); unlink them so the
        # request's objects are freed by reference counting when the book lets go of the
        # tracks, not by a full garbage collection (tens of ms under load; bench/NOTES.md).
        entry.tracks, entry.books = [], []
        self._saved(ctx, report, batched)
        self._observe(ctx, report)  # last: once a request's energy is counted, its savings are too
        try:
            self.on_final(ctx)
        except Exception:
            log.exception("on_final failed for request %s", ctx.request_id)

    # ------------------------------------------------------------------ metrics

    def _observe(self, ctx: RequestContext, report: EnergyReport) -> None:
        m = self.metrics
        model = ctx.model or "-"
        # answered (a stream's outcome is written after its last chunk, maybe after this: its status is not)
        if ctx.status == 200 and ctx.outcome in ("ok", "pending") and report.source == "measured" and ctx.model:
            self.ratings.observe(ctx.model, report.joules)
        m.c_request_energy(model, ctx.backend or "-", ctx.key_name or "anonymous", report.source).observe(
            report.joules
        )
        m.c_model_energy(model, ctx.team, report.source).inc(report.joules)
        m.c_co2e(model, ctx.team).inc(report.co2e_g)
        if report.usd:
            m.c_cost(model, ctx.team).inc(report.usd)

    def _saved(
        self, ctx: RequestContext, report: EnergyReport, batched: tuple[str, float, float] | None = None
    ) -> None:
        """Counterfactual energy saved, by lever (estimates of what did not happen).

        routing: the same tokens priced on the model the request would have run on without
        right-sizing (``ctx.counterfactual_model``: the model asked for, or the top tier for
        ``auto``) on a backend serving it, with that backend's measured/modelled ratio, minus
        what it cost; 0 when it ran there (the series still shows the lever).
        reasoning: policy switched off thinking on a model that thinks by default
        (``ctx.reasoning_avoided``): the reasoning tokens such a request generates on this
        deployment (learned from the ones that did reason, ``counterfactual.py``), never more
        than its max_tokens left room for, priced on the model that answered.
        batching: a deferred request (flex, batch; ``batched``: its backend, the mean batch it ran
        in, and the batch it would have joined as an interactive request, ``_interactive_batch``
        plus itself): the same tokens priced by the token-cost model at that batch, less at its own,
        times the backend's measured/modelled ratio; 0 when it ran in no fuller a batch.
        """
        usage = ctx.usage if isinstance(ctx.usage, dict) else None
        if usage is None or not ctx.model:
            return
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return
        if ctx.reasoning and ctx.reasoning_tokens > 0:
            self.reasoning.observe(ctx.model, ctx.task_class, ctx.reasoning_tokens)
        other = ctx.counterfactual_model
        if other:
            saved = self.counterfactual_joules(other, prompt, completion) - report.joules if other != ctx.model else 0.0
            # routed up (a saturated tier spilled over) saves nothing
            self.metrics.energy_saved.labels(ctx.model, "routing").inc(max(saved, 0.0))
        if batched is not None:
            name, ran, interactive = batched
            costs, k = self.costs(name, ctx.model), self.samplers[name].book.k
            gain = costs.request(prompt, completion, interactive) - costs.request(prompt, completion, ran)
            self.metrics.energy_saved.labels(ctx.model, "batching").inc(k * max(gain, 0.0))
        if ctx.reasoning_avoided:
            tokens = self.reasoning.credit(ctx.model, ctx.task_class, completion, ctx.max_tokens)
            extra = self.counterfactual_joules(ctx.model, 0, round(tokens)) if tokens > 0 else 0.0
            self.metrics.energy_saved.labels(ctx.model, "reasoning").inc(extra)
            self.metrics.reasoning_credit_tokens.labels(ctx.model, ctx.task_class).inc(round(tokens))

    def _interval(self, sampler: BackendSampler, iv: Interval | None) -> None:
        """From a sampler thread, after each interval (None: at shutdown): energy split, power, tokens/J."""
        m = self.metrics
        for (kind, source), joules in sampler.book.take_tally().items():
            if joules > 0:
                m.energy.labels(sampler.name, kind, source).inc(joules)
        if iv is None:
            return
        if iv.measured and iv.watts is not None:
            m.gpu_power.labels(sampler.name).set(iv.watts)
        model = self._served_model(sampler.name)
        if not (model and iv.measured and iv.gen_tokens is not None and iv.joules > 0):
            return
        window = self._tpj.get(sampler.name)
        if window is None:
            window = self._tpj[sampler.name] = _Window()
        window.add(iv.t1, iv.gen_tokens, iv.joules, model)
        gen = joules = 0.0
        for other in list(self._tpj.values()):
            if other.model == model:
                gen, joules = gen + other.gen, joules + other.joules
        if joules > 0:
            m.tokens_per_joule.labels(model).set(gen / joules)


def _bf16(model: str) -> float:
    return 16.0


def _batched(
    ctx: RequestContext,
    tracks: list[Track],
    books: list[Book],
    answered_on: Book | None,
    interactive_batch: Callable[[str], float | None],
) -> tuple[str, float, float] | None:
    """For a deferred request: (backend, the mean batch it ran in, the batch it would have run in as
    an interactive request: the model's interactive batch plus itself), from its attempts on the
    backend that answered (``answered_on``'s book); None for an interactive request, or before the
    model's backends saw any interactive traffic."""
    if ctx.service_tier not in DEFERRED_TIERS or ctx.backend is None or answered_on is None or ctx.model is None:
        return None
    interactive = interactive_batch(ctx.model)
    there = [t for t, b in zip(tracks, books) if b is answered_on]
    busy = sum(t.busy_s for t in there)
    if busy <= 0 or interactive is None:
        return None
    return ctx.backend, sum(t.batch_s for t in there) / busy, interactive + 1.0


class _Window:
    """Generated tokens and joules of one backend over the last minute (running sums)."""

    __slots__ = ("items", "gen", "joules", "model")

    def __init__(self) -> None:
        self.items: deque[tuple[float, float, float]] = deque()
        self.gen = 0.0
        self.joules = 0.0
        self.model: str | None = None

    def add(self, t: float, gen: float, joules: float, model: str) -> None:
        self.model = model
        self.items.append((t, gen, joules))
        self.gen += gen
        self.joules += joules
        while self.items and self.items[0][0] < t - TOKENS_PER_JOULE_WINDOW_S:
            _, g, j = self.items.popleft()
            self.gen -= g
            self.joules -= j
