"""Attribution on synthetic intervals: proportional split, others, idle, conservation, spreading."""

from __future__ import annotations

import math
import random

import pytest

from gateway.context import RequestContext
from gateway.energy.attribution.book import Book
from gateway.energy.attribution.records import Interval
from gateway.energy.coefficients import TokenCosts, context_sum

COSTS = TokenCosts(8.0, 1, "h100")


def book(**kw) -> Book:
    kw.setdefault("horizon_s", 0.0)
    kw.setdefault("calibrate", False)  # the model's weights as they are, so the expected splits are exact
    return Book(lambda: COSTS, **kw)


def ctx(rid: str, stream: bool = True, prompt_est: int = 0, endpoint: str = "completions") -> RequestContext:
    c = RequestContext(request_id=rid, endpoint=endpoint, body={}, stream=stream)
    c.prompt_tokens_est = prompt_est
    return c


def interval(t0, t1, joules, prompt=0.0, gen=0.0, running=0.0, measured=True) -> Interval:
    return Interval(t0, t1, joules, measured, prompt, gen, running, running)


def conserved(b: Book) -> None:
    assert b.attributed_j + b.idle_j + b.other_j + b.carried_j == pytest.approx(b.total_j, rel=1e-9, abs=1e-9)


def test_equal_work_splits_equally_and_nothing_is_left_over():
    b = book()
    a, c = ctx("a", prompt_est=1000), ctx("c", prompt_est=1000)
    for x in (a, c):
        x.first_byte = 0.0
        b.begin(x, sent=0.0)
    # both already prefilled before the first interval: place their prompts, then decode
    b.push(interval(-0.1, 0.0, 0.0, prompt=2000, running=2))
    a.gen_tokens_seen = c.gen_tokens_seen = 20
    b.push(interval(0.0, 1.0, 100.0, gen=40, running=2))
    ta, tc = b.tracks
    assert ta.joules == pytest.approx(tc.joules)
    assert ta.joules + tc.joules == pytest.approx(100.0)
    assert b.other_j == pytest.approx(0.0, abs=1e-9)
    conserved(b)


def test_split_follows_the_work_each_did():
    b = book()
    a, c = ctx("a"), ctx("c")
    for x in (a, c):
        x.first_byte = 0.0
        b.begin(x, sent=0.0)
    a.gen_tokens_seen, c.gen_tokens_seen = 10, 30
    b.push(interval(0.0, 1.0, 100.0, gen=40, running=2))
    ta, tc = b.tracks
    wa = COSTS.decode_run(2, 10, context_sum(0, 0, 10))
    wc = COSTS.decode_run(2, 30, context_sum(0, 0, 30))
    assert ta.joules == pytest.approx(100.0 * wa / (wa + wc))
    assert tc.joules == pytest.approx(100.0 * wc / (wa + wc))
    assert 3.0 < tc.joules / ta.joules < 3.05  # three times the tokens, slightly longer contexts


def test_a_long_context_token_weighs_more_than_a_short_one():
    b = book()
    long, short = ctx("long", prompt_est=8000), ctx("short", prompt_est=100)
    for x in (long, short):
        b.begin(x, sent=0.0)
    long.first_byte = short.first_byte = 0.0
    b.push(interval(-0.5, 0.0, 0.0, prompt=8100, running=2))
    long.gen_tokens_seen = short.gen_tokens_seen = 50
    b.push(interval(0.0, 1.0, 100.0, gen=100, running=64))
    tl, ts = b.tracks
    assert tl.joules > 1.5 * ts.joules


def test_other_clients_take_their_share():
    b = book()
    a = ctx("a", prompt_est=500)
    a.first_byte = 0.0
    b.begin(a, sent=0.0)
    b.push(interval(-0.1, 0.0, 0.0, prompt=500, running=1))
    a.gen_tokens_seen = 40
    # the backend generated 80 tokens: 40 of them for someone we do not see
    b.push(interval(0.0, 1.0, 100.0, gen=80, running=2))
    assert b.tracks[0].joules == pytest.approx(50.0, rel=0.02)
    assert b.other_j == pytest.approx(50.0, rel=0.02)
    conserved(b)


def test_idle_energy_is_reported_and_never_charged():
    b = book()
    a = ctx("a")
    b.begin(a, sent=0.0)
    b.push(interval(0.0, 1.0, 85.0, running=0))  # nothing ran
    assert b.idle_j == pytest.approx(85.0)
    assert b.tracks[0].joules == 0.0
    a.first_byte = 1.0
    a.gen_tokens_seen = 10
    b.push(interval(1.0, 2.0, 300.0, gen=10, running=1))
    assert b.tracks[0].joules == pytest.approx(300.0)  # its own interval only, not the idle one
    assert b.idle_j == pytest.approx(85.0)
    conserved(b)


def test_a_request_that_starts_in_an_idle_interval_is_not_charged_its_idle_part():
    b = book()
    steady = ctx("steady")
    steady.first_byte = 0.0
    first = b.begin(steady, sent=0.0)
    for i in range(10):  # busy at both ends: the work costs what the model says
        steady.gen_tokens_seen = 10 * (i + 1)
        work = COSTS.decode_run(1, 10, context_sum(0, 10 * i, 10 * (i + 1)))
        b.push(Interval(i * 0.1, (i + 1) * 0.1, work, True, 0.0, 10, 1, 1))
    b.end(first, 1.0, {"prompt_tokens": 0, "completion_tokens": 100})
    b.push(Interval(1.0, 1.1, 8.0, True, 0.0, 0, 0, 0))  # it ended; idle: 80 W
    idle = b.idle_j
    late = ctx("late")
    track = b.begin(late, sent=1.15)
    late.first_byte, late.gen_tokens_seen = 1.15, 5
    work = COSTS.decode_run(1, 5, context_sum(0, 0, 5))
    # idle until 1.15, then the request: nothing was running when the interval began
    b.push(Interval(1.1, 1.2, work + 4.0, True, 0.0, 5, 1, 0.5))
    assert track.joules == pytest.approx(work, rel=0.02)
    assert b.idle_j - idle == pytest.approx(4.0, rel=0.05)
    conserved(b)


def test_idle_can_be_amortised_over_the_next_busy_interval():
    b = book(amortise_idle=True)
    a = ctx("a")
    b.begin(a, sent=0.0)
    b.push(interval(0.0, 1.0, 85.0, running=0))
    a.first_byte = 1.0
    a.gen_tokens_seen = 10
    b.push(interval(1.0, 2.0, 300.0, gen=10, running=1))
    assert b.idle_j == 0.0
    assert b.tracks[0].joules == pytest.approx(385.0)
    conserved(b)


def test_busy_without_counted_work_carries_to_the_next_work():
    b = book()
    a = ctx("a", stream=False)
    b.begin(a, sent=0.0)
    b.push(interval(0.0, 1.0, 600.0, running=1))  # a long prefill: running, nothing counted yet
    assert b.idle_j == 0.0 and b.carried_j == pytest.approx(600.0)
    b.push(interval(1.0, 2.0, 500.0, prompt=10000, gen=20, running=1))
    assert b.carried_j == 0.0
    conserved(b)


def test_non_streaming_requests_claim_their_share_at_the_end():
    b = book()
    s = ctx("s", prompt_est=100)
    n = ctx("n", stream=False)
    b.begin(s, sent=0.0)
    b.begin(n, sent=0.0)
    s.first_byte = 0.0
    b.push(interval(-0.1, 0.0, 0.0, prompt=200, running=2))  # both prompts counted
    for i in range(4):  # each generates 10 tokens a second; the backend counts both
        s.gen_tokens_seen += 10
        b.push(interval(i, i + 1.0, 100.0, gen=20, running=2))
    assert b.other_j == pytest.approx(200.0, rel=0.05)  # the unary request's half, for now
    n.usage = {"prompt_tokens": 100, "completion_tokens": 40}
    s.usage = {"prompt_tokens": 100, "completion_tokens": 40}
    b.end(b.tracks[0], 4.0, s.usage)
    b.end(b.tracks[1], 4.0, n.usage)
    final = b.push(interval(4.0, 4.1, 1.0, running=0))
    assert {t.ctx.request_id for t in final} == {"s", "n"}
    ts, tn = sorted(final, key=lambda t: t.ctx.request_id)[::-1]
    assert tn.joules == pytest.approx(ts.joules, rel=0.05)
    assert b.other_j < 0.02 * b.total_j
    conserved(b)


def test_a_claim_leaves_other_clients_their_energy():
    b = book()
    n = ctx("n", stream=False)
    b.begin(n, sent=0.0)
    for i in range(4):  # 10 tokens/s ours (unseen until the end) + 30 tokens/s from someone else
        b.push(interval(i, i + 1.0, 100.0, gen=40, running=4))
    b.end(b.tracks[0], 4.0, {"prompt_tokens": 0, "completion_tokens": 40})
    (tn,) = b.push(interval(4.0, 4.1, 1.0, running=0))
    assert tn.joules == pytest.approx(100.0, rel=0.05)  # a quarter of 400 J
    assert b.other_j == pytest.approx(300.0, rel=0.05)
    conserved(b)


def test_prefill_energy_lands_on_the_request_that_prefilled():
    """A 4,000-token prompt prefilled while another request decodes gets its prefill's energy."""
    b = book(horizon_s=2.0)
    decoder, long = ctx("decoder", prompt_est=100), ctx("long", prompt_est=4000)
    decoder.first_byte = -1.0
    b.begin(decoder, sent=-1.0)
    b.push(interval(-1.1, -1.0, 0.0, prompt=100, running=1))
    b.begin(long, sent=0.0)
    d = COSTS.prefill_seconds(4000)
    fb = 0.05 + d  # prefill from 0.05 s to fb, then its first token
    step = 0.1
    t = 0.0
    truth_long = 0.0
    while t < 3.0:
        t1 = round(t + step, 10)
        overlap = max(0.0, min(t1, fb) - max(t, fb - d))
        prefill_j = COSTS.prefill(4000) * overlap / d
        truth_long += prefill_j
        running = 2 if t1 > 0.05 else 1
        decode_j = COSTS.decode_run(running, 10, context_sum(100, decoder.gen_tokens_seen, decoder.gen_tokens_seen + 10))
        decoder.gen_tokens_seen += 10
        counted = 4000 if t < fb <= t1 else 0
        if t1 >= fb:
            long.first_byte = fb
        b.push(interval(t, t1, decode_j + prefill_j, prompt=counted, gen=10, running=running))
        t = t1
    b.end(b.tracks[1], 3.0, {"prompt_tokens": 4000, "completion_tokens": 0})
    b.end(b.tracks[0], 3.0, {"prompt_tokens": 100, "completion_tokens": decoder.gen_tokens_seen})
    final = {tr.ctx.request_id: tr for tr in b.flush()}
    assert final["long"].joules == pytest.approx(truth_long, rel=0.10)
    conserved(b)


def test_unknown_counters_estimate_our_work_and_leave_the_energy_unattributed():
    b = book()
    a = ctx("a")
    a.first_byte = 0.0
    b.begin(a, sent=0.0)
    a.gen_tokens_seen = 10
    b.push(interval(0.0, 1.0, 100.0, prompt=None, gen=None, running=1))
    tr = b.tracks[0]
    assert tr.joules == 0.0 and tr.est_joules > 0
    assert b.other_j == pytest.approx(100.0)


def test_a_one_tick_lag_of_our_proxy_does_not_leak_energy_to_others():
    b = book()
    a = ctx("a", prompt_est=100)
    a.first_byte = 0.0
    b.begin(a, sent=0.0)
    b.push(interval(-0.1, 0.0, 0.0, prompt=100, running=1))
    rng = random.Random(1)
    for i in range(200):  # the backend counts up to 3 tokens before we relay them
        a.gen_tokens_seen = 10 * (i + 1) - rng.randint(0, 3)
        b.push(interval(i * 0.1, (i + 1) * 0.1, 10.0, gen=10, running=1))
    assert b.other_j < 0.005 * b.total_j  # the largest lag once, not a share of every interval
    conserved(b)


def test_exact_running_counts_are_taken_as_they_are_and_counted_events_lose_the_chat_role_event():
    b = book()
    exact = ctx("exact", endpoint="chat")
    exact.first_byte = 0.0
    exact.gen_tokens_seen, exact.gen_tokens_exact = 10, True  # running usage: the role chunk said 0
    b.begin(exact, sent=0.0)
    b.push(interval(0.0, 1.0, 100.0, gen=10, running=1))
    assert b.tracks[0].gen_seen == 10
    b.end(b.tracks[0], 1.0, {"prompt_tokens": 0, "completion_tokens": 10})
    b.push(interval(1.0, 2.0, 10.0))
    # a backend without running usage: the proxy counts events, and the role delta is one of them
    counted = ctx("counted", endpoint="chat")
    counted.first_byte = 2.0
    counted.gen_tokens_seen = 11  # the role delta and 10 tokens
    b.begin(counted, sent=2.0)
    b.push(interval(2.0, 3.0, 100.0, gen=10, running=1))
    assert b.tracks[-1].gen_seen == 10


def test_conservation_over_a_random_mixed_workload():
    rng = random.Random(7)
    b = book(horizon_s=1.0)
    live = []
    t = 0.0
    for step in range(600):
        if rng.random() < 0.05:
            x = ctx(f"r{step}", stream=rng.random() < 0.7, prompt_est=rng.randint(10, 3000))
            b.begin(x, sent=t)
            live.append(x)
        prompt = gen = 0
        for x in list(live):
            if x.stream and x.first_byte is None and rng.random() < 0.5:
                x.first_byte = t
                prompt += x.prompt_tokens_est
            if x.stream and x.first_byte is not None:
                n = rng.randint(0, 5)
                x.gen_tokens_seen += n
                gen += n
            if not x.stream:
                gen += 3
            if rng.random() < 0.02:
                live.remove(x)
                track = next(tr for tr in b.tracks if tr.ctx is x)
                usage = {"prompt_tokens": x.prompt_tokens_est, "completion_tokens": x.gen_tokens_seen + rng.randint(-2, 4)}
                b.end(track, t, usage)
        others = rng.randint(0, 20) if rng.random() < 0.3 else 0
        running = len(live) + (1 if others else 0)
        joules = rng.uniform(5, 70) if running else 8.5
        b.push(interval(t, t + 0.1, joules, prompt=prompt, gen=gen + others, running=running))
        t += 0.1
    b.flush()
    conserved(b)
    assert b.idle_j > 0 and b.attributed_j > 0 and b.other_j > 0


def test_the_calibration_learns_each_kind_of_work_from_the_meter():
    from gateway.energy.estimators import Calibration

    cal = Calibration()
    rng = random.Random(3)
    for _ in range(400):
        step, token, prefill = rng.uniform(5, 20), rng.uniform(0, 5), rng.choice([0.0, 0.0, rng.uniform(0, 30)])
        cal.update(1.3 * step + 0.9 * token + 0.5 * prefill, (step, token, prefill))
    fs, ft, fp = cal.factors
    assert fs == pytest.approx(1.3, rel=0.05) and ft == pytest.approx(0.9, rel=0.1) and fp == pytest.approx(0.5, rel=0.05)
    assert Calibration().factors == (1.0, 1.0, 1.0)  # nothing seen: the model as it is


def run_prefill_world(calibrate: bool) -> tuple[float, float]:
    """A backend whose prompts really cost half what the model says; returns (ours, truth) of the last prompt."""
    b = book(calibrate=calibrate)
    decoder = ctx("decoder", prompt_est=100)
    decoder.first_byte = 0.0
    b.begin(decoder, sent=0.0)
    b.push(interval(-0.1, 0.0, 0.0, prompt=100, running=1))
    truth = 0.0
    final = []
    for i in range(120):
        t = i * 0.1
        decode_j = COSTS.decode_run(2, 10, context_sum(100, decoder.gen_tokens_seen, decoder.gen_tokens_seen + 10))
        decoder.gen_tokens_seen += 10
        prompt = 0
        if i % 2:  # a streaming request whose 2,000-token prompt is prefilled in this interval
            x = ctx(f"p{i}", prompt_est=2000)
            b.begin(x, sent=t)
            x.first_byte = t + 0.09
            prompt = 2000
            truth = 0.5 * COSTS.prefill(2000)
            b.end(b.tracks[-1], t + 0.09, {"prompt_tokens": 2000, "completion_tokens": 0})
        final += b.push(interval(t, t + 0.1, decode_j + 0.5 * COSTS.prefill(prompt), prompt=prompt, gen=10, running=2))
    (last,) = [tr for tr in final + b.flush() if tr.ctx.request_id == "p119"]
    return last.joules, truth


def test_calibration_gives_a_prompt_its_measured_cost_not_the_models():
    ours, truth = run_prefill_world(calibrate=True)
    assert ours == pytest.approx(truth, rel=0.08)  # the prior (a few intervals' worth) pulls a little
    uncalibrated, _ = run_prefill_world(calibrate=False)
    assert uncalibrated > 1.2 * truth  # what the model alone would have charged


def test_closed_intervals_are_kept_for_the_oldest_request_in_flight_not_for_the_uptime():
    from gateway.energy.attribution.book import RING_MARGIN_S

    b = book()
    t = 0.0
    for _ in range(3000):  # five minutes of busy intervals from other clients, none of ours
        b.push(interval(t, t + 0.1, 50.0, gen=10, running=1))
        t += 0.1
    assert len(b._ring) <= RING_MARGIN_S / 0.1 + 2  # a minute's worth, not five
    # a unary request that runs ten minutes claims its share over its whole life at the end
    n = ctx("n", stream=False)
    b.begin(n, sent=t)
    start = t
    for _ in range(6000):
        b.push(interval(t, t + 0.1, 50.0, gen=10, running=1))
        t += 0.1
    assert b._ring[0].t1 <= start  # everything since it began is still there
    n.usage = {"prompt_tokens": 10, "completion_tokens": 60000}  # every token the backend made meanwhile
    b.end(b.tracks[0], t, n.usage)
    [track] = b.push(interval(t, t + 0.1, 0.0, running=0))
    # it claimed over its whole life (a minute's ring would have held a tenth of it)
    assert track.joules > 0.8 * 50.0 * 6000
    conserved(b)
    b.push(interval(t + 0.1, t + RING_MARGIN_S + 1, 1.0, running=0))
    assert len(b._ring) <= 3  # and let go of them once it was final


def test_the_interactive_batch_fades_with_time_not_with_busy_intervals():
    """(sequences x s, s): busy intervals with no deferred request add to it; every interval, idle
    or deferred, fades it, so a replica that stopped serving interactive requests weighs less and
    less when the model's replicas are pooled (EnergyService._interactive_batch)."""
    from gateway.energy.attribution.book import INTERACTIVE_TAU_S

    b = book()
    for i in range(10):  # 1 s at a batch of 4
        b.push(interval(i * 0.1, (i + 1) * 0.1, 20.0, gen=40, running=4))
    batch_s, busy_s = b.interactive
    assert batch_s / busy_s == pytest.approx(4.0) and busy_s == pytest.approx(1.0, rel=0.01)
    for i in range(10, 10 + 3000):  # 300 s idle
        b.push(interval(i * 0.1, (i + 1) * 0.1, 8.0))
    faded_batch, faded_busy = b.interactive
    assert faded_batch / faded_busy == pytest.approx(4.0)  # the mean is the same...
    assert faded_busy == pytest.approx(busy_s * math.exp(-300.0 / INTERACTIVE_TAU_S), rel=0.02)  # ...its weight not
