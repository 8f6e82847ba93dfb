"""The sampler thread and the service facade against a fake backend over real HTTP."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from gateway.config import BackendConfig, DcgmMeterConfig, EstimateMeterConfig, NvmlMeterConfig
from gateway.context import RequestContext
from gateway.energy.service import EnergyService
from gateway.telemetry.metrics import Metrics

from .fakes import FakeBackend, fake_pynvml


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def backend():
    b = FakeBackend()
    yield b
    b.close()


class Finals:
    def __init__(self):
        self.ctxs: list[RequestContext] = []
        self.lock = threading.Lock()

    def __call__(self, ctx):
        with self.lock:
            self.ctxs.append(ctx)


def service_for(backend_cfg, finals, **kw):
    metrics = Metrics()
    svc = EnergyService([backend_cfg], lambda model: 8.0, metrics, finals, **kw)
    return svc, metrics


def started(svc, name="b"):
    """Wait until the sampler took its baseline (what happened before is not ours)."""
    wait_for(lambda: svc.samplers[name]._last_t is not None, what="the sampler's first tick")


def value(metrics, name, **labels):
    return metrics.registry.get_sample_value(name, labels) or 0.0


def request(rid="r1", stream=True, backend="b"):
    ctx = RequestContext(request_id=rid, endpoint="completions", body={}, stream=stream)
    ctx.backend, ctx.model, ctx.sent = backend, "Qwen/Qwen3-8B", time.monotonic()
    ctx.prompt_tokens_est = 10
    return ctx


def test_a_streaming_request_gets_the_energy_it_caused_and_idle_is_not_charged(backend):
    cfg = BackendConfig(name="b", url=backend.url, meter=DcgmMeterConfig(type="dcgm", url=f"{backend.url}/dcgm/metrics", interval_s=0.02))
    finals = Finals()
    svc, metrics = service_for(cfg, finals, horizon_s=0.1)
    svc.start()
    try:
        started(svc)
        ctx = request()
        svc.begin(ctx)
        time.sleep(0.05)
        with backend.lock:
            backend.prompt += 10
            backend.running = 1
            ctx.first_byte = time.monotonic()
        for _ in range(20):  # 20 steps of 10 tokens, 10 J each: the only traffic on the backend
            with backend.lock:
                backend.gen += 10
                backend.add_energy(10.0)
                ctx.gen_tokens_seen += 10
            time.sleep(0.03)
        with backend.lock:
            backend.running = 0
            ctx.usage = {"prompt_tokens": 10, "completion_tokens": 200}
            ctx.finished = time.monotonic()
        report = svc.end(ctx)
        assert report.source == "measured-provisional"
        assert report.joules > 0
        for _ in range(10):  # idle: 5 J per step, nothing running
            with backend.lock:
                backend.add_energy(5.0)
            time.sleep(0.03)
        wait_for(lambda: finals.ctxs, what="the final report")
    finally:
        svc.stop()
    (final,) = finals.ctxs
    assert final is ctx and ctx.energy.source == "measured"
    assert 195.0 <= ctx.energy.joules <= 215.0  # its 200 J, give or take one idle step at the edge
    assert ctx.energy.co2e_g == pytest.approx(ctx.energy.joules / 3.6e6 * 475.0)
    attributed = value(metrics, "gateway_energy_joules_total", backend="b", kind="attributed", source="measured")
    idle = value(metrics, "gateway_energy_joules_total", backend="b", kind="idle", source="measured")
    other = value(metrics, "gateway_energy_joules_total", backend="b", kind="other", source="measured")
    assert attributed == pytest.approx(ctx.energy.joules)
    assert attributed + idle + other == pytest.approx(250.0, rel=0.01)  # all the meter measured
    assert idle >= 35.0
    hist = value(metrics, "gateway_request_energy_joules_count", model_name="Qwen/Qwen3-8B", backend="b", key="anonymous", source="measured")
    assert hist == 1
    assert value(metrics, "gateway_tokens_per_joule", model_name="Qwen/Qwen3-8B") > 0
    assert svc.backend_power_watts("b") == pytest.approx(600.0)


def test_an_unreachable_meter_falls_back_to_estimates_labelled_as_such(backend):
    backend.dcgm_up = False
    cfg = BackendConfig(name="b", url=backend.url, meter=DcgmMeterConfig(type="dcgm", url=f"{backend.url}/dcgm/metrics", interval_s=0.02))
    finals = Finals()
    svc, metrics = service_for(cfg, finals, horizon_s=0.1)
    svc.samplers["b"].max_merge_s = 0.2
    svc.start()
    try:
        wait_for(lambda: not svc.samplers["b"].primary.available, what="the meter to be given up")
        ctx = request()
        svc.begin(ctx)
        time.sleep(0.05)
        with backend.lock:
            ctx.first_byte = time.monotonic()
            backend.prompt, backend.gen, backend.running = backend.prompt + 10, backend.gen + 50, 1
            ctx.gen_tokens_seen = 50
        time.sleep(0.1)
        with backend.lock:
            backend.running = 0
            ctx.usage = {"prompt_tokens": 10, "completion_tokens": 50}
            ctx.finished = time.monotonic()
        assert svc.end(ctx).source == "estimated"
        wait_for(lambda: finals.ctxs, what="the final report")
    finally:
        svc.stop()
    assert ctx.energy.source == "estimated" and ctx.energy.joules > 0
    assert svc.backend_power_watts("b") is None


def test_stop_finalises_what_is_pending_and_late_ends_still_reach_on_final(backend):
    cfg = BackendConfig(name="b", url=backend.url, meter=EstimateMeterConfig(interval_s=0.02))
    finals = Finals()
    svc, _ = service_for(cfg, finals, horizon_s=30.0)  # nothing would become final by itself
    svc.start()
    started(svc)
    ended, late = request("ended", stream=False), request("late", stream=False)
    svc.begin(ended)
    svc.begin(late)
    wait_for(lambda: svc.samplers["b"].book.tracks, what="the sampler to take the requests")
    with backend.lock:
        backend.prompt, backend.gen, backend.running = 100, 100, 2
    time.sleep(0.1)
    ended.usage = {"prompt_tokens": 100, "completion_tokens": 100}
    ended.finished = time.monotonic()
    svc.end(ended)
    svc.stop()
    assert [c.request_id for c in finals.ctxs] == ["ended"]
    assert ended.energy.joules > 0
    late.usage = {"prompt_tokens": 100, "completion_tokens": 10}
    late.finished = time.monotonic()
    report = svc.end(late)
    assert [c.request_id for c in finals.ctxs] == ["ended", "late"]
    assert late.energy is report and report.source == "estimated" and report.joules > 0


def test_a_retried_request_sums_its_attempts_and_is_final_once(backend):
    cfg = BackendConfig(name="b", url=backend.url, meter=EstimateMeterConfig(interval_s=0.02))
    finals = Finals()
    svc, _ = service_for(cfg, finals, horizon_s=0.05)
    svc.start()
    started(svc)
    try:
        ctx = request(stream=False)
        svc.begin(ctx)
        svc.abandon(ctx)  # the first attempt failed before answering
        ctx.sent = time.monotonic()
        svc.begin(ctx)
        with backend.lock:
            backend.prompt, backend.gen, backend.running = 100, 40, 1
        time.sleep(0.1)
        with backend.lock:
            backend.running = 0
        ctx.usage = {"prompt_tokens": 100, "completion_tokens": 40}
        ctx.finished = time.monotonic()
        svc.end(ctx)
        wait_for(lambda: finals.ctxs, what="the final report")
        time.sleep(0.1)
    finally:
        svc.stop()
    assert finals.ctxs == [ctx]
    assert ctx.energy.source == "estimated" and ctx.energy.joules > 0


def test_requests_on_an_unknown_backend_are_estimated_at_once(backend):
    cfg = BackendConfig(name="b", url=backend.url)
    finals = Finals()
    svc, _ = service_for(cfg, finals)
    ctx = request(backend="elsewhere", stream=False)
    svc.begin(ctx)
    ctx.usage = {"prompt_tokens": 10, "completion_tokens": 10}
    report = svc.end(ctx)
    assert report.source == "estimated" and finals.ctxs == [ctx]


def test_counterfactual_prices_the_tokens_on_the_other_model(backend):
    small = BackendConfig(name="small", url=backend.url, models=["small-model"])
    large = BackendConfig(name="large", url=backend.url, models=["large-model"], gpus=2)
    sizes = {"small-model": 1.7, "large-model": 32.0}
    svc = EnergyService([small, large], sizes.get, Metrics(), lambda ctx: None)
    on_small = svc.counterfactual_joules("small-model", 500, 300)
    on_large = svc.counterfactual_joules("large-model", 500, 300)
    assert on_large > 5 * on_small > 0
    assert svc.counterfactual_joules("unknown-70B", 500, 300) > on_small


def test_the_sampler_thread_drives_a_fake_nvml_and_shuts_it_down(backend, monkeypatch):
    nvml = fake_pynvml(gpus=1, watts=450.0)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    cfg = BackendConfig(name="b", url=backend.url, meter=NvmlMeterConfig(type="nvml", gpus=[0], interval_s=0.02))
    svc, metrics = service_for(cfg, Finals(), horizon_s=0.05)
    svc.start()
    sampler = svc.samplers["b"]
    try:
        wait_for(lambda: value(metrics, "gateway_energy_joules_total", backend="b", kind="idle", source="measured") > 0,
                 what="idle energy")  # fmt: skip
        assert sampler._thread.is_alive() and nvml.calls["init"] == 1
        assert svc.backend_power_watts("b") == pytest.approx(450.0)
    finally:
        svc.stop()
    assert not sampler._thread.is_alive()
    assert nvml.calls["shutdown"] == 1


def test_the_sampler_waits_for_the_counter_to_move_and_survives_a_backend_restart(backend):
    """Driven tick by tick (no thread; an interval so short that every tick may cut): merging
    while the exporter's counter stands still, and a vLLM restart whose counters go back to
    small values."""
    from gateway.energy.attribution.book import Book
    from gateway.energy.coefficients import TokenCosts
    from gateway.energy.meters import DcgmMeter
    from gateway.energy.sampler import BackendSampler

    cfg = BackendConfig(name="b", url=backend.url)
    intervals = []
    sampler = BackendSampler(
        cfg, DcgmMeter(f"{backend.url}/dcgm/metrics"), Book(lambda: TokenCosts(8.0), horizon_s=0.0),
        lambda: TokenCosts(8.0), lambda final: None, lambda s, iv: intervals.append(iv), interval_s=1e-6,
    )  # fmt: skip
    with backend.lock:
        backend.prompt, backend.gen, backend.running = 1000, 5000, 2
    sampler.tick()  # baseline
    with backend.lock:
        backend.gen += 40
    sampler.tick()  # tokens moved, the counter did not: wait
    assert intervals == []
    with backend.lock:
        backend.gen += 40
        backend.add_energy(50.0)
    sampler.tick()
    (merged,) = intervals
    assert merged.gen_tokens == 80 and merged.joules == pytest.approx(50.0)
    with backend.lock:  # vLLM restarted: its counters start again from zero
        backend.prompt, backend.gen = 12, 30
        backend.add_energy(20.0)
    sampler.tick()
    assert intervals[-1].gen_tokens == 30 and intervals[-1].prompt_tokens == pytest.approx(12)
    assert sampler.book.total_j == pytest.approx(70.0)


def test_energy_saved_by_routing_is_the_counterfactual_minus_the_cost(backend):
    small = BackendConfig(name="small", url=backend.url, models=["small-model"])
    large = BackendConfig(name="large", url=backend.url, models=["large-model"])
    metrics = Metrics()
    svc = EnergyService([small, large], {"small-model": 1.7, "large-model": 32.0}.get, metrics, lambda ctx: None)
    routed = request("routed", stream=False, backend="small")
    routed.model, routed.counterfactual_model = "small-model", "large-model"
    routed.usage = {"prompt_tokens": 200, "completion_tokens": 300}
    asked = request("asked", stream=False, backend="small")
    asked.model, asked.counterfactual_model = "small-model", None
    asked.usage = {"prompt_tokens": 200, "completion_tokens": 300}
    for ctx in (routed, asked):
        svc.begin(ctx)
        svc.end(ctx)  # not started: final at once
    saved = value(metrics, "gateway_energy_saved_joules_total", model_name="small-model", lever="routing")
    expected = svc.counterfactual_joules("large-model", 200, 300) - routed.energy.joules
    assert saved == pytest.approx(expected) and saved > 0


def test_reasoning_off_credit_is_the_learned_estimate_within_max_tokens(backend):
    from gateway.energy.counterfactual import PRIORS

    cfg = BackendConfig(name="b", url=backend.url, models=["Qwen/Qwen3-8B"])
    metrics = Metrics()
    svc = EnergyService([cfg], lambda model: 8.0, metrics, lambda ctx: None)

    def credited(rid, task_class, completion=100, max_tokens=None):
        ctx = request(rid, stream=False)
        ctx.reasoning_avoided, ctx.task_class, ctx.max_tokens = True, task_class, max_tokens
        ctx.usage = {"prompt_tokens": 20, "completion_tokens": completion}
        before = value(metrics, "gateway_energy_saved_joules_total", model_name="Qwen/Qwen3-8B", lever="reasoning")
        svc.begin(ctx)
        svc.end(ctx)
        return value(metrics, "gateway_energy_saved_joules_total", model_name="Qwen/Qwen3-8B", lever="reasoning") - before

    price = lambda tokens: svc.counterfactual_joules("Qwen/Qwen3-8B", 0, tokens)  # noqa: E731
    # no opted-in traffic yet: the prior of the request's class, far below the old flat 7,650 tokens
    assert credited("t0", "trivial") == pytest.approx(price(round(PRIORS["trivial"])))
    assert credited("h0", "hard") == pytest.approx(price(round(PRIORS["hard"])))
    # never more than max_tokens left room for
    assert credited("h1", "hard", completion=900, max_tokens=1000) == pytest.approx(price(100))
    assert credited("h2", "hard", completion=1000, max_tokens=1000) == 0.0
    # requests that did reason on this model move the estimate toward what they cost
    for i in range(40):
        ctx = request(f"on{i}", stream=False)
        ctx.reasoning, ctx.reasoning_tokens, ctx.task_class = True, 6000, "hard"
        ctx.usage = {"prompt_tokens": 20, "completion_tokens": 6400}
        svc.begin(ctx)
        svc.end(ctx)
    learned = svc.reasoning.expected("Qwen/Qwen3-8B", "hard")
    assert PRIORS["hard"] < learned < 6000 and learned == pytest.approx((10 * PRIORS["hard"] + 40 * 6000) / 50)
    assert credited("h3", "hard") == pytest.approx(price(round(learned)))
    assert svc.reasoning.expected("Qwen/Qwen3-8B", "trivial") == PRIORS["trivial"]  # other classes keep theirs


def test_energy_saved_by_batching_prices_a_deferred_requests_tokens_at_the_interactive_batch(backend):
    cfg = BackendConfig(name="b", url=backend.url, meter=DcgmMeterConfig(type="dcgm", url=f"{backend.url}/dcgm/metrics", interval_s=0.02))
    finals = Finals()
    svc, metrics = service_for(cfg, finals, horizon_s=0.1)
    svc.start()

    def run(ctx, running, steps=12):
        svc.begin(ctx)
        time.sleep(0.05)  # the sampler takes the request in before the backend runs it
        with backend.lock:
            backend.prompt += 10
            backend.running = running
        for _ in range(steps):
            with backend.lock:
                backend.gen += 5 * running
                backend.add_energy(10.0 + running)
            time.sleep(0.03)
        with backend.lock:
            backend.running = 0
            ctx.usage = {"prompt_tokens": 10, "completion_tokens": 60}
            ctx.finished = time.monotonic()
        svc.end(ctx)

    try:
        started(svc)
        run(request("interactive", stream=False), running=2)  # interactive traffic runs 2 at a time
        line = request("line", stream=False)
        line.service_tier = "batch"
        run(line, running=16)  # a Batch API line runs in a batch of 16
        for _ in range(8):
            with backend.lock:
                backend.add_energy(5.0)
            time.sleep(0.03)
        wait_for(lambda: len(finals.ctxs) == 2, what="both final")
    finally:
        svc.stop()
    book = svc.samplers["b"].book
    interactive = svc._interactive_batch("Qwen/Qwen3-8B")
    assert interactive == pytest.approx(2.0, rel=0.25)  # the batch line's intervals left out
    costs = svc.costs("b")
    at_interactive = costs.request(10, 60, interactive + 1)  # it would have joined that batch
    saved = value(metrics, "gateway_energy_saved_joules_total", model_name="Qwen/Qwen3-8B", lever="batching")
    # the line's tokens at the interactive batch it would have joined, less at its own (~16): one
    # request's credit, and the interactive request earns none
    assert saved == pytest.approx(book.k * (at_interactive - costs.request(10, 60, 16.0)), rel=0.15)
    assert saved > 0.5 * book.k * at_interactive


def test_the_interactive_batch_is_pooled_over_the_models_replicas():
    """With the deferred work packed onto one replica, interactive requests run on the other: the
    batch a deferred request would have joined is the model's, weighted by busy time."""
    backends = [BackendConfig(name=n, url=f"http://127.0.0.1:{port}", models=["m"]) for n, port in (("a", 1), ("b", 2))]
    backends.append(BackendConfig(name="c", url="http://127.0.0.1:3", models=["other"]))
    svc = EnergyService(backends, lambda m: 8.0, Metrics(), lambda ctx: None)
    assert svc._interactive_batch("m") is None  # before any interactive traffic
    svc.samplers["a"].book._interactive = (3.0, 1.0)  # the batch replica: 1 s of interactive work at 3
    svc.samplers["b"].book._interactive = (27.0, 9.0)  # the interactive one: 9 s at 3
    svc.samplers["c"].book._interactive = (100.0, 1.0)  # another model's: not counted
    assert svc._interactive_batch("m") == pytest.approx(3.0)
    svc.samplers["b"].book._interactive = (9.0, 9.0)
    assert svc._interactive_batch("m") == pytest.approx(1.2)
    assert svc._interactive_batch("unknown") is None
