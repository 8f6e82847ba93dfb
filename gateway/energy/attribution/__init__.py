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

The modules, by job: ``records`` (what the book keeps: the intervals, our requests, open and
closed intervals), ``timeline`` (the open intervals: energy, counted prompts and our streaming
progress laid where they happened), ``split`` (closing an interval: its energy split by work),
``settle`` (a request's claims at its end), ``books`` (where every joule lands) and ``book``
(one backend's ``Book``, which ties them together).
"""
