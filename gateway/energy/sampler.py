"""One background thread per backend: read the meter and the backend's counters, feed the book.

Each tick (the meter's ``interval_s``) the thread

1. takes the begin/end events the event loop left in its inbox (a deque: appending never
   blocks the loop; it is drained every tick, and refused when it grows past ``INBOX_MAX``
   because the thread is stuck, so memory stays bounded and the caller falls back),
2. scrapes the backend's vLLM ``/metrics`` (prompt and generated token counters, running and
   waiting requests) and reads the meter at the same moment,
3. hands the interval since the previous tick to the attribution ``Book``, which reads our
   requests' progress (``ctx.gen_tokens_seen``, ``ctx.first_byte``) at that moment too,
4. passes the requests that became final, and the interval, back to the service.

An interval is only cut when both its energy and the counters are known: an exporter whose
counter has not moved yet, or a failed scrape, makes the tick wait and the next interval
longer (energy is never lost, only less finely timed). After ``max_merge_s`` without one, the
interval is cut anyway with what is known; a meter that stays silent that long is declared
failed and the estimate takes over (a DCGM exporter is retried every ``retry_s``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from gateway.config import BackendConfig
from gateway.energy.attribution.book import Book
from gateway.energy.attribution.records import Interval, Track
from gateway.energy.coefficients import TokenCosts
from gateway.energy.meters import DcgmMeter, EstimateMeter, Meter, Reading
from gateway.energy.scrape import HttpGetter, VllmCounters, counter_delta, parse_vllm

log = logging.getLogger("gateway.energy")

INBOX_MAX = 100_000


class BackendSampler:
    def __init__(
        self,
        backend: BackendConfig,
        meter: Meter,
        book: Book,
        costs: Callable[[], TokenCosts],
        on_final: Callable[[list[Track]], None],
        on_interval: Callable[[BackendSampler, Interval | None], None],
        *,
        interval_s: float | None = None,
        max_merge_s: float = 65.0,
        retry_s: float = 30.0,
        scrape: Callable[[], str | None] | None = None,
    ) -> None:
        self.backend = backend
        self.name = backend.name
        self.primary = meter
        self.meter = meter
        self.book = book
        self.costs = costs
        self.on_final = on_final
        self.on_interval = on_interval
        self.interval_s = interval_s or backend.meter.interval_s
        self.max_merge_s = max_merge_s
        self.retry_s = retry_s
        self.inbox: deque[tuple] = deque()
        self.models: list[str] = []  # model names the backend reports (vllm model_name label)
        self.counters: VllmCounters | None = None  # latest scrape
        self.reading: Reading | None = None  # latest meter reading
        self.running = False
        headers = {"Authorization": f"Bearer {backend.api_key}"} if backend.api_key else None
        self._http = HttpGetter(
            f"{backend.url}/metrics", timeout=min(2.0, max(0.5, 5 * self.interval_s)), headers=headers
        )
        self._scrape = scrape or self._http.get
        self._current: dict[int, Track] = {}  # entry id -> this backend's live track for it
        self._last_t: float | None = None  # the previous cut
        self._last_j: float | None = None
        self._last_at: float | None = None  # the moment the meter's energy at the previous cut was reached
        self._moved = False  # a coarse meter's counter moved since the previous cut
        self._last_counters: VllmCounters | None = None
        self._next_retry = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"energy-{self.name}", daemon=True)
        self.running = True
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("energy sampler of %s did not stop within %.0f s", self.name, timeout)

    def submit(self, event: tuple) -> bool:
        """Queue a begin/abandon/end event for the thread; False if it cannot take it."""
        if not self.running or len(self.inbox) >= INBOX_MAX:
            return False
        self.inbox.append(event)
        return True

    def _run(self) -> None:
        try:
            self.meter.open()
        except Exception as exc:  # a meter must never take the gateway down
            log.exception("opening the %s meter of %s failed", self.meter.kind, self.name)
            self.meter.fail(f"open failed: {exc}")
        if not self.meter.available:
            self._fall_back(time.monotonic())
        next_tick = time.monotonic()
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("energy sampler tick of %s failed", self.name)
            next_tick += self.interval_s / max(1, self.meter.polls)
            delay = next_tick - time.monotonic()
            if delay < 0:  # a slow scrape: skip ahead rather than burst
                next_tick, delay = time.monotonic(), 0.0
            self._stop.wait(delay)
        self.running = False
        try:
            try:
                self.tick(last=True)  # what the meter counted since the last cut
            except Exception:
                log.exception("energy sampler tick of %s failed", self.name)
            self._drain()
            self.on_final(self.book.flush())
            self.on_interval(self, None)  # publish what the flush settled
        finally:
            self.primary.close()
            self.meter.close()
            self._http.close()

    # ------------------------------------------------------------------ one tick

    def tick(self, last: bool = False) -> None:
        """One poll. A meter whose counter moves in coarse steps (``meter.polls`` > 1) is read at
        every poll, and the backend is scraped only once the counter has moved (at most about
        once per ``interval_s``), so that a cut follows the counter's update closely; any other
        meter is read with every scrape. ``last``: the sampler is stopping, cut what has moved now."""
        self._drain()
        coarse = self.meter.polls > 1 and self._last_t is not None
        reading: Reading | None = None
        if coarse:
            reading = self._read(time.monotonic(), self.counters)
            if reading is not None:
                self.reading = reading
                self._moved = self._moved or reading.fresh
            elif self._moved:
                reading = self.reading  # the counter moved at an earlier poll
            since = time.monotonic() - (self._last_t or 0.0)  # coarse: _last_t is set
            if since < self.max_merge_s and not (self._moved and (last or since >= 0.75 * self.interval_s)):
                return
        text = self._scrape()
        counters = parse_vllm(text) if text else None
        now = time.monotonic()
        if not coarse:
            reading = self._read(now, counters)
            if reading is not None:
                self.reading = reading
            self._moved = reading is not None and reading.fresh
        if counters is not None:
            self.counters = counters
            if counters.models:
                self.models = counters.models
        if self._last_t is None:  # the first tick is the baseline
            self._last_t, self._last_counters = now, counters
            self._last_j = reading.joules if reading is not None else None
            self._last_at = _reached(reading, now)
            self._moved = False
            return

        ready = reading is not None and self._moved
        split = counters is not None and self._last_counters is not None
        if ready and split and self._last_j is not None:
            self._cut(now, reading, counters, split=True)
        elif ready and counters is not None:
            self._cut(now, reading, counters, split=False)  # a baseline was missing: that span is unknown
        elif now - self._last_t >= self.max_merge_s:
            if not ready and self.meter is self.primary and self.meter.measured:
                reason = getattr(self.meter, "error", None) or "no reading"
                self.meter.fail(f"no fresh reading for {now - self._last_t:.0f} s ({reason})")
                self._fall_back(now)
                reading = self.meter.read(now, counters)
            self._cut(now, reading, counters, split=split and reading is not None)
        # else: wait for the meter's counter to move, or for the backend's counters

    def _read(self, now: float, counters: VllmCounters | None) -> Reading | None:
        if self.meter is not self.primary:  # on the estimate: try the real meter again now and then
            if isinstance(self.primary, DcgmMeter) and now >= self._next_retry:
                self._next_retry = now + self.retry_s
                probe = self.primary.read(now, counters)
                if probe is not None:
                    log.info("%s meter of %s is back", self.primary.kind, self.name)
                    self.primary.available, self.primary.reason = True, None
                    self.meter = self.primary
                    self._last_j = probe.joules
                    self._last_at = _reached(probe, now)
                    return None  # the next interval is measured again
        elif not self.meter.available:
            self._fall_back(now)
        return self.meter.read(now, counters)

    def _fall_back(self, now: float) -> None:
        estimate = EstimateMeter(self.costs)
        if self._last_counters is not None and self._last_t is not None:
            estimate.read(self._last_t, self._last_counters)  # prime: price the span since the last cut
        self.meter = estimate
        self._last_j = 0.0
        self._next_retry = now + self.retry_s

    def _cut(self, now: float, reading: Reading | None, counters: VllmCounters | None, split: bool) -> None:
        last = self._last_counters
        joules = 0.0
        if reading is not None and self._last_j is not None:
            joules = max(0.0, reading.joules - self._last_j)
        if split and counters is not None and last is not None:
            d_prompt: float | None = counter_delta(last.prompt_tokens, counters.prompt_tokens)
            d_gen: float | None = counter_delta(last.generation_tokens, counters.generation_tokens)
            running = max(last.running, counters.running)
            batch = (last.running + counters.running) / 2.0
        else:
            d_prompt = d_gen = None
            running = batch = counters.running if counters is not None else 0.0
        until = _reached(reading, now) if reading is not None else now
        iv = Interval(
            t0=self._last_t if self._last_t is not None else now,  # tick() cuts only after its baseline
            t1=now,
            joules=joules,
            since=self._last_at if self._last_at is not None and self._last_at <= until else self._last_t,
            until=until,
            measured=self.meter.measured and reading is not None,
            prompt_tokens=d_prompt,
            gen_tokens=d_gen,
            running=running,
            batch=batch,
            watts=reading.watts if reading is not None and self.meter.measured else None,
        )
        self._last_t, self._last_counters = now, counters
        self._last_j = reading.joules if reading is not None else None
        self._last_at = until
        self._moved = False
        final = self.book.push(iv)
        self.on_interval(self, iv)
        if final:
            self.on_final(final)

    # ------------------------------------------------------------------ events

    def _drain(self) -> None:
        inbox = self.inbox
        while inbox:
            kind, ctx, entry, t = inbox.popleft()
            key = id(entry)
            if kind == "begin":
                track = self.book.begin(ctx, ctx.sent if ctx.sent is not None else t)
                track.owner = entry
                entry.books.append(self.book)  # books first: a reader pairs them up with zip()
                entry.tracks.append(track)
                self._current[key] = track
                continue
            if key not in self._current:
                continue
            track = self._current.pop(key)
            usage = ctx.usage if kind == "end" else None  # an abandoned attempt's usage is not its own
            finished = ctx.finished if kind == "end" and ctx.finished is not None else t
            self.book.end(track, finished, dict(usage) if isinstance(usage, dict) else None)


def _reached(reading: Reading | None, now: float) -> float:
    """The moment a reading's energy is the energy up to."""
    if reading is None or reading.at is None:
        return now
    return min(reading.at, now)
