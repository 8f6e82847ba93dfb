"""Precision as right-sizing: a quantized deployment of a model is as able and cheaper, so the router
prefers it within the tier, by the price measured here; the config can say otherwise."""

from __future__ import annotations

import math
import time

import pytest

from gateway.config import BackendConfig, ModelConfig, RoutingConfig
from gateway.context import RequestContext
from gateway.energy.attribution.split import PRICE_FADE_S
from gateway.energy.coefficients import TokenCosts
from gateway.energy.service import EnergyService
from gateway.precision import precision_of
from gateway.proxy.backends import BackendPool, ServedModel
from gateway.routing.adequacy import AdequacyModel
from gateway.routing.catalog import Catalog
from gateway.routing.router import Router
from gateway.telemetry.metrics import Metrics

SMALL, LARGE, LARGE_FP8 = "Qwen/Qwen3-1.7B", "Qwen/Qwen3-32B", "Qwen/Qwen3-32B-FP8"
PROOF = ("Prove that there are infinitely many primes of the form 4k + 3, then show that the sum of the reciprocals "
         "of the primes diverges. Give complete proofs, state every lemma you use and justify each step.")  # fmt: skip


@pytest.mark.parametrize(("name", "precision"), [
    ("Qwen/Qwen3-32B-FP8", "fp8"), ("neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8-dynamic", "fp8"),
    ("hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4", "awq"), ("TheBloke/Llama-2-7B-GPTQ", "gptq"),
    ("RedHatAI/Llama-3.1-8B-Instruct-quantized.w8a8", "int8"), ("RedHatAI/Llama-3.1-8B-Instruct-quantized.w4a16", "int4"),
    ("openai/gpt-oss-20b", "mxfp4"), ("nvidia/Llama-3.3-70B-Instruct-NVFP4", "nvfp4"),
    ("Qwen/Qwen3-32B", "bf16"), ("mistralai/Mistral-7B-Instruct-v0.3", "bf16"),
])  # fmt: skip
def test_the_name_states_the_precision_by_convention(name, precision):
    assert precision_of(name) == precision


def test_the_config_and_the_checkpoint_root_say_it_for_any_other_name():
    assert precision_of("prod-chat", "awq") == "awq"
    assert precision_of("prod-chat", None, root="/models/Qwen3-32B-FP8") == "fp8"
    assert precision_of("prod-chat") == "bf16"


def pool_of(served: dict[str, int]) -> BackendPool:
    """One healthy backend per model, with its GPU count."""
    configs = [BackendConfig(name=f"b{i}", url=f"http://127.0.0.1:{9100 + i}", gpus=g)
               for i, g in enumerate(served.values())]  # fmt: skip
    pool = BackendPool(configs, session_factory=lambda: None)
    for b, name in zip(pool.backends, served):
        b.healthy = True
        b.models = {name: ServedModel(name, 32768)}
    return pool


def ask(router: Router, text: str, model: str = "auto"):
    ctx = RequestContext(request_id="t", endpoint="chat", body={"messages": [{"role": "user", "content": text}]})
    return router.route(ctx, model)


def test_a_quantized_deployment_is_as_able_and_shares_the_tier():
    catalog = Catalog({}, pool_of({SMALL: 1, LARGE: 2, LARGE_FP8: 1}))
    bf16, fp8 = catalog.get(LARGE), catalog.get(LARGE_FP8)
    assert (bf16.precision, fp8.precision) == ("bf16", "fp8")
    assert fp8.ability_b == bf16.ability_b and fp8.tier == bf16.tier == "large"
    assert fp8.card(0)["precision"] == "fp8" and fp8.card(0)["energy_rating"] is None
    assert catalog.weight_bits(LARGE_FP8) == 8.0 and catalog.weight_bits("elsewhere-AWQ") == 4.25
    # ... unless the config says otherwise: a lower ability makes it a tier of its own
    catalog = Catalog({LARGE_FP8: ModelConfig(ability=20.0, precision="fp8")}, pool_of({SMALL: 1, LARGE: 2, LARGE_FP8: 1}))
    assert catalog.tiers == ["small", "medium", "large"] and catalog.get(LARGE_FP8).tier == "medium"


def test_the_weights_stream_in_their_own_bytes():
    bf16, fp8 = TokenCosts(32.0, 2, "h200"), TokenCosts(32.0, 2, "h200", weight_bits=8.0)
    assert bf16.step_j - fp8.step_j == pytest.approx(0.5 * (bf16.step_j - TokenCosts(32.0, 2, "h200", 0.0).step_j))
    assert fp8.decode(8) < bf16.decode(8) and fp8.prefill(100) == bf16.prefill(100)


def test_the_router_prefers_the_cheaper_deployment_of_equal_ability_as_priced_here():
    pool = pool_of({SMALL: 1, LARGE: 2, LARGE_FP8: 1})
    catalog = Catalog({}, pool)
    prices = {LARGE: 0.30, LARGE_FP8: 0.18, SMALL: 0.05}
    router = Router(catalog, pool, RoutingConfig(), AdequacyModel.load(), token_price=prices.get)
    assert ask(router, PROOF).model.name == LARGE_FP8  # the large tier, its cheaper deployment
    assert ask(router, PROOF, "tier:large").model.name == LARGE_FP8
    assert ask(router, PROOF, LARGE).model.name == LARGE  # a model named is a model served
    # measured here the FP8 deployment costs more (ML.ENERGY saw that for MoE models): the other goes
    prices[LARGE_FP8] = 0.45
    assert ask(router, PROOF).model.name == LARGE
    # a saturated deployment gives way to its idle twin before the tier spills up
    prices[LARGE_FP8] = 0.1
    fp8_backend = next(b for b in pool.backends if LARGE_FP8 in b.models)
    fp8_backend.waiting = 100
    assert ask(router, PROOF).model.name == LARGE
    fp8_backend.waiting = 0
    # and a deployment that is down is not picked, however cheap
    prices[LARGE_FP8] = 0.1
    next(b for b in pool.backends if LARGE_FP8 in b.models).healthy = False
    assert ask(router, PROOF).model.name == LARGE


def test_the_price_is_the_models_prior_times_what_the_backends_meter_measured():
    backends = [BackendConfig(name="bf", url="http://127.0.0.1:1", models=[LARGE], gpus=2),
                BackendConfig(name="q", url="http://127.0.0.1:2", models=[LARGE_FP8], gpus=1)]  # fmt: skip
    catalog = Catalog({}, pool_of({LARGE: 2, LARGE_FP8: 1}))
    svc = EnergyService(backends, lambda m: 32.0, Metrics(), lambda ctx: None, weight_bits=catalog.weight_bits)
    bf16, fp8 = svc.expected_j_per_token(LARGE), svc.expected_j_per_token(LARGE_FP8)
    assert fp8 == pytest.approx(TokenCosts(32.0, 1, "h200", 8.0).decode(8)) and fp8 < bf16
    # the FP8 backend's meter says its work costs 3x what the model priced (k = 3)
    split = svc.samplers["q"].book.splitter
    split._k_num, split._k_den, split.k_at = 3.0, 1.0, time.monotonic()
    assert svc.expected_j_per_token(LARGE_FP8) == pytest.approx(3 * fp8, rel=1e-3)
    assert svc.expected_j_per_token(LARGE_FP8) > bf16
    # a measurement the router stopped renewing (it sent the traffic elsewhere) fades back to the
    # model's price, so the deployment is tried and measured again: 1/e of the excess after PRICE_FADE_S
    split.k_at = time.monotonic() - PRICE_FADE_S
    assert svc.expected_j_per_token(LARGE_FP8) == pytest.approx((1 + 2 / math.e) * fp8, rel=1e-3)
    split.k_at = time.monotonic() - 10 * PRICE_FADE_S
    assert svc.expected_j_per_token(LARGE_FP8) == pytest.approx(fp8, rel=1e-3) and fp8 < bf16
    # tried again, its first clean interval outweighs the faded measurement: now 1.5x the model
    split.learn_k(1.5, 1.0, time.monotonic())
    assert split.k == pytest.approx(1.5, rel=1e-3)
    assert svc.expected_j_per_token(LARGE_FP8) == pytest.approx(1.5 * fp8, rel=1e-3)
    # while measurements keep coming, each keeps 0.98 of those before it
    split.learn_k(3.0, 1.0, time.monotonic())
    assert split.k == pytest.approx((1.5 * 0.98 + 3.0) / (0.98 + 1.0), rel=1e-3)
    assert svc.expected_j_per_token("not-served") is None
