"""A continuous-batching engine on a simulated clock (vLLM V1's scheduler, reduced to its timing).

Each step, every running sequence that has its prompt in the KV cache decodes one token, and
prompts are prefilled in chunks under a token budget (``max_num_batched_tokens``; running
sequences first, then the waiting queue in arrival order, up to ``max_num_seqs`` sequences and
the KV-cache capacity; when the cache is full the newest sequence is preempted and recomputed
later). The step's duration and energy come from the GPU model (``power.CostModel``, additive, or
``roofline.RooflineModel``, ``--power-model``); its energy is booked on the ``EnergyMeter`` when it
starts and split between the sequences in it by that model's own accounting (the ground truth).

Time is virtual ("simulated seconds"). With a float ``speed`` the engine sleeps so that simulated
time runs ``speed`` times faster than the wall clock (1.0 = realistic). With ``speed=None``
(instant) steps take no wall time but the bookkeeping is identical (the engine runs steps in
slices of ``INSTANT_SLICE`` wall time between turns of the event loop); idle time still passes
at wall-clock rate. Metrics and latencies are in simulated seconds.

vLLM's counting rules are kept: prompt tokens are counted when a prompt's prefill completes
(once, even if the sequence is preempted and recomputed), generation tokens as they are sampled
(the first one by the step that completes the prefill), so the counters are exact at any moment.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from time import monotonic, time

from .metrics import EngineMetrics
from .power import EnergyMeter, StepModel, tick

WAITING, RUNNING, FINISHED = 0, 1, 2
INSTANT_SLICE = 0.002  # seconds of wall time the instant engine runs before letting the server in


class EngineDeadError(RuntimeError):
    pass


class Sequence:
    """One request in the engine, and its energy ground truth."""

    __slots__ = (
        "rid",
        "key",
        "prompt_len",
        "target",
        "planned_reason",
        "max_tokens_param",
        "embed",
        "state",
        "prefill_len",
        "n_prefilled",
        "chunk",
        "n_out",
        "ctx",
        "prompt_counted",
        "arrival",
        "scheduled",
        "first_token",
        "last_token",
        "end",
        "energy",
        "finish_reason",
        "aborted",
        "error",
        "waiter",
        "done",
        "preemptions",
    )

    def __init__(
        self,
        rid: str,
        prompt_len: int,
        target: int,
        planned_reason: str,
        max_tokens_param: int | None = None,
        embed: bool = False,
    ) -> None:
        self.rid = rid
        self.key = rid  # its row in the ground truth (choice k > 0 of a request with n > 1: "rid/k")
        self.prompt_len = prompt_len
        self.target = target  # tokens to generate (0 for an embedding)
        self.planned_reason = planned_reason
        self.max_tokens_param = max_tokens_param
        self.embed = embed
        self.state = WAITING
        self.prefill_len = prompt_len  # grows to prompt + output when recomputed after preemption
        self.n_prefilled = 0
        self.chunk = 0
        self.n_out = 0
        self.ctx = 0  # tokens in its KV cache once the prompt is in (prompt + generated)
        self.prompt_counted = False
        self.arrival = 0.0
        self.scheduled: float | None = None
        self.first_token: float | None = None
        self.last_token = 0.0
        self.end: float | None = None
        self.energy = 0.0
        self.finish_reason: str | None = None
        self.aborted = False
        self.error = False
        self.waiter: asyncio.Future | None = None
        self.done: asyncio.Future | None = None
        self.preemptions = 0

    @property
    def kv_tokens(self) -> int:
        return self.ctx if self.n_prefilled == self.prefill_len else self.n_prefilled

    async def wait(self) -> None:
        """Wait until the engine produces more tokens for this sequence or finishes it."""
        if self.state != FINISHED:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter

    def row(self) -> tuple:
        """Its ground-truth row: (joules, prompt tokens, completion tokens, finish reason, start, end)."""
        return (self.energy, self.prompt_len, self.n_out, self.finish_reason, self.arrival, self.end)


def _notify(seq: Sequence) -> None:
    """Resolve the sequence's waiter (a reader may share one future between the choices of a request)."""
    waiter = seq.waiter
    seq.waiter = None
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


ROW_FIELDS = ("joules", "prompt_tokens", "completion_tokens", "finished_reason", "start", "end")


class Engine:
    def __init__(
        self,
        cost: StepModel,
        *,
        max_model_len: int,
        max_num_seqs: int = 1024,
        max_num_batched_tokens: int = 8192,
        kv_capacity: int,
        speed: float | None = 1.0,
        keep_records: int = 200_000,
    ) -> None:
        self.cost = cost
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.kv_capacity = kv_capacity
        self.speed = speed
        self.idle_rate = speed if speed is not None else 1.0
        self.metrics = EngineMetrics(max_model_len)
        self.meter = EnergyMeter()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.kv_used = 0
        # ground truth by request id: the Sequence while it runs, its row (a tuple) once finished
        self.records: dict[str, Sequence | tuple] = {}
        self.keep_records = keep_records
        self._record_order: deque[str] = deque()  # oldest first, for eviction
        # what arrived when (key, arrival, prompt tokens, tokens to generate, planned finish reason,
        # embedding): enough to replay the load offline (replay.py: marginal cost of a request)
        self.trace: deque[tuple[str, float, int, int, str, bool]] = deque(maxlen=keep_records)
        self.evicted_j = 0.0
        self.evicted_n = 0
        self.idle_j = 0.0
        self.dead = False
        # the clock
        self.v = 0.0  # simulated time booked so far (end of the current step while one runs)
        self.idle = True
        self.idle_since = monotonic()
        self._deadline = 0.0  # wall time at which the current step ends (float speed)
        self._in_step = False
        self._step_start = 0.0
        self._aborts = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._wake = asyncio.Event()
        self.idle_since = monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # --- clock --------------------------------------------------------------------------------
    def now(self) -> float:
        """The present in simulated seconds."""
        if self.idle:
            return self.v + (monotonic() - self.idle_since) * self.idle_rate
        if self._in_step and self.speed is not None:
            left = self._deadline - monotonic()
            if left > 0:
                return max(self._step_start, self.v - left * self.speed)
        return self.v

    def sync(self) -> float:
        """Book idle energy up to now, so readers see a complete timeline; returns now."""
        if self.idle:
            now = self.now()
            self.idle_j += self.meter.book(now, self.cost.idle_watts)
            self.v = now
            self.idle_since = monotonic()
            return now
        return self.now()

    # --- requests -----------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def kv_cache_usage(self) -> float:
        return self.kv_used / self.kv_capacity if self.kv_capacity else 0.0

    def submit(self, seq: Sequence) -> Sequence:
        if self.dead:
            raise EngineDeadError("EngineCore encountered an issue. See stack trace (above) for the root cause.")
        seq.arrival = self.now()
        key = seq.key
        if key in self.records:  # a reused X-Request-Id keeps its own ground-truth row
            n = 2
            while f"{key}#{n}" in self.records:
                n += 1
            key = f"{key}#{n}"
        seq.key = key
        self.records[key] = seq
        self._record_order.append(key)
        self.trace.append((key, seq.arrival, seq.prompt_len, seq.target, seq.planned_reason, seq.embed))
        if len(self.records) > self.keep_records:
            self._evict()
        self.waiting.append(seq)
        assert self._wake is not None, "submit() before start()"
        self._wake.set()
        return seq

    def abort(self, seq: Sequence) -> None:
        """The client went away: drop the request (at the next step if it is on the GPU)."""
        if seq.state == FINISHED or seq.aborted:
            return
        seq.aborted = True
        if seq.state == WAITING:
            self.waiting.remove(seq)
            self._finalize(seq, "abort", self.now())
        else:
            self._aborts = True

    def kill(self) -> None:
        """Simulate ``EngineDeadError``: every request fails, new ones are refused."""
        self.dead = True
        now = self.now()
        for seq in [*self.waiting, *self.running]:
            seq.error = True
            seq.aborted = True
        for seq in list(self.waiting):
            self._finalize(seq, "abort", now, count=False)
        self.waiting.clear()
        self._aborts = True

    def revive(self) -> None:
        self.dead = False

    def ground_truth(self) -> dict:
        """``GET /debug/energy``: joules since start, for the whole GPU group.

        ``total_j = idle_j + Σ requests[*].joules + evicted.joules`` exactly; ``counter_j`` is what
        the DCGM counter has added since start at this instant (behind ``total_j`` by less than
        one 100 ms update, and unaffected by counter resets). Requests are keyed by X-Request-Id
        (a reused id gets ``#2``, ``#3``…; with ``n`` > 1, choice k > 0 is its own sequence, keyed
        ``<id>/k``); ``start``/``end``/``now`` are simulated seconds since
        start, ``wall_now`` the Unix time of this reading; ``finished_reason`` is null while the
        request runs (its joules so far are included).
        """
        now = self.sync()
        return {
            "total_j": self.meter.booked_j,
            # what the energy counter has counted since start, read at this instant (it lags by < 100 ms)
            "counter_j": self.meter.energy_at(tick(now)),
            "idle_j": self.idle_j,
            "requests": {
                rid: dict(zip(ROW_FIELDS, row if isinstance(row, tuple) else row.row()))
                for rid, row in self.records.items()
            },
            "evicted": {"count": self.evicted_n, "joules": self.evicted_j},
            "now": now,
            "wall_now": time(),
        }

    def _evict(self) -> None:
        order = self._record_order
        while len(self.records) > self.keep_records:
            row = self.records[order[0]]
            if type(row) is not tuple:  # the oldest is still running
                return
            del self.records[order.popleft()]
            self.evicted_j += row[0]
            self.evicted_n += 1

    # --- the loop -----------------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._wake is not None  # set by start(), which runs this
        while True:
            if not self.running and not self.waiting:
                self._wake.clear()
                self.idle_since = monotonic()
                self.idle = True
                await self._wake.wait()
                now = self.now()
                self.idle_j += self.meter.book(now, self.cost.idle_watts)
                self.v = now
                self.idle = False
                self._deadline = monotonic()
            if self.speed is None:
                self._run_slice()
                await asyncio.sleep(0)
                continue
            step = self._begin_step()
            if step is None:
                await asyncio.sleep(0)
                continue
            wall = monotonic()
            if self._deadline < wall - 0.05:  # far behind (CPU-bound): don't burst to catch up
                self._deadline = wall
            self._deadline += step[2] / self.speed
            self._in_step = True
            delay = self._deadline - monotonic()
            await asyncio.sleep(delay if delay > 0 else 0)
            self._in_step = False
            self._finish_step(*step)

    def _run_slice(self) -> None:
        """Instant mode: run steps back to back for up to ``INSTANT_SLICE`` of wall time.

        Steps cost no wall time, so the engine runs ahead of its readers and their deltas
        coalesce, as vLLM's do when the GPU outpaces the API server.
        """
        stop = monotonic() + INSTANT_SLICE
        while self.running or self.waiting:
            step = self._begin_step()
            if step is None:
                return
            self._finish_step(*step)
            if monotonic() > stop:
                return

    def _begin_step(self):
        start = self.v
        running = self.running
        if self._aborts:
            self._aborts = False
            for seq in running:
                if seq.aborted:
                    self._finalize(seq, "abort", start, count=not seq.error)
            running = self.running = [s for s in running if s.state != FINISHED]
        if self.kv_used + len(running) > self.kv_capacity:
            self._preempt(len(running))
            running = self.running
        budget = self.max_num_batched_tokens
        decode: list[Sequence] = []
        prefill: list[Sequence] = []
        chunks: list[tuple[int, int]] = []  # (chunk, start) of each prompt chunk
        for seq in running:
            remaining = seq.prefill_len - seq.n_prefilled
            if remaining == 0:
                decode.append(seq)
                budget -= 1
            elif budget > 0:
                chunk = remaining if remaining < budget else budget
                seq.chunk = chunk
                prefill.append(seq)
                chunks.append((chunk, seq.n_prefilled))
                budget -= chunk
        waiting = self.waiting
        while waiting and budget > 0 and len(running) < self.max_num_seqs:
            seq = waiting[0]
            chunk = min(seq.prefill_len - seq.n_prefilled, budget)
            if self.kv_used + chunk > self.kv_capacity:
                break
            waiting.popleft()
            running.append(seq)
            seq.state = RUNNING
            if seq.scheduled is None:
                seq.scheduled = start
            seq.chunk = chunk
            prefill.append(seq)
            chunks.append((chunk, seq.n_prefilled))
            budget -= chunk
        if not decode and not prefill:
            return None
        t, energy, shares = self.cost.step([seq.ctx for seq in decode], chunks, start)
        for seq, share in zip(decode, shares):
            seq.energy += share
        for seq, share in zip(prefill, shares[len(decode):]):
            seq.energy += share
            self.kv_used += seq.chunk
        self.kv_used += len(decode)
        self.meter.book(start + t, energy / t)
        self._step_start = start
        self.v = start + t
        return decode, prefill, t, start

    def _finish_step(self, decode: list[Sequence], prefill: list[Sequence], t: float, start: float) -> None:
        end = self.v
        m = self.metrics
        finished: list[Sequence] = []
        generated = 0
        regular = 0  # sequences whose previous token came out at the end of the previous step
        for seq in decode:
            seq.ctx += 1
            if seq.aborted:  # its output is dropped; the step's energy was still spent on it
                continue
            seq.n_out += 1
            generated += 1
            if seq.last_token == start:
                regular += 1
            else:
                m.itl.observe(end - seq.last_token)
            seq.last_token = end
            if seq.n_out >= seq.target:
                finished.append(seq)
            elif seq.waiter is not None:
                _notify(seq)
        if regular:
            m.itl.observe(t, regular)
        decoded = generated
        for seq in prefill:
            seq.n_prefilled += seq.chunk
            if seq.n_prefilled < seq.prefill_len or seq.aborted:
                continue
            seq.ctx = seq.prefill_len
            if not seq.prompt_counted:
                seq.prompt_counted = True
                m.prompt_tokens += seq.prompt_len
                m.prefix_cache_queries += seq.prompt_len
            if seq.embed:
                finished.append(seq)
                continue
            seq.n_out += 1
            generated += 1
            if seq.first_token is None:
                seq.first_token = end
                m.pending_ttft.append(end - seq.arrival)
            else:  # resumed after preemption
                m.itl.observe(end - seq.last_token)
            seq.last_token = end
            if seq.n_out >= seq.target:
                finished.append(seq)
            elif seq.waiter is not None:
                _notify(seq)
        m.generation_tokens += generated
        # the step's scheduled tokens, plus the first token of each prompt it finished (vLLM counts
        # the tokens sampled in a step as generation tokens of that step)
        m.iteration_tokens.observe(len(decode) + sum(seq.chunk for seq in prefill) + generated - decoded)
        if finished:
            for seq in finished:
                self._finalize(seq, seq.planned_reason, end)
            self.running = [s for s in self.running if s.state != FINISHED]

    def _preempt(self, needed: int) -> None:
        """Free KV space by sending the newest running sequences back to the queue (recompute)."""
        running = self.running
        while running and self.kv_used + needed > self.kv_capacity:
            seq = running.pop()
            needed -= 1
            self.kv_used -= seq.kv_tokens
            seq.n_prefilled = 0
            seq.prefill_len = seq.prompt_len + seq.n_out
            seq.state = WAITING
            self.waiting.appendleft(seq)
            seq.preemptions += 1
            self.metrics.preemptions += 1

    def _finalize(self, seq: Sequence, reason: str, now: float, count: bool = True) -> None:
        if seq.state == RUNNING:
            self.kv_used -= seq.kv_tokens
        seq.state = FINISHED
        seq.finish_reason = reason
        seq.end = now
        self.records[seq.key] = seq.row()
        if count:
            m = self.metrics
            m.request_success[reason] += 1
            m.pending_finished.append(
                (
                    seq.arrival,
                    seq.scheduled,
                    seq.first_token,
                    now,
                    seq.prompt_len,
                    seq.n_out,
                    seq.max_tokens_param,
                    seq.preemptions,
                )
            )
            if len(m.pending_finished) > 4096:
                m.fold()
        if seq.waiter is not None:
            _notify(seq)
        if seq.done is not None and not seq.done.done():
            seq.done.set_result(None)
