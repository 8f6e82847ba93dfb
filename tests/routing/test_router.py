"""The router in process: catalog abilities, the quality budget, fixed thresholds, the decision's words."""

import pytest

from gateway.config import BackendConfig, ModelConfig, RoutingConfig
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.proxy.backends import BackendPool, ServedModel
from gateway.routing.ability import ability_b, facts_from_name
from gateway.routing.adequacy import AdequacyModel
from gateway.routing.catalog import Catalog
from gateway.routing.router import Router

SMALL, MEDIUM, LARGE = "Qwen/Qwen3-1.7B", "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-32B"
PROOF = ("Prove that there are infinitely many primes of the form 4k + 3, then show that the sum of the reciprocals "
         "of the primes diverges. Give complete proofs, state every lemma you use and justify each step.")


def router(served=(SMALL, MEDIUM, LARGE), models=None, **routing) -> Router:
    configs = [BackendConfig(name=f"b{i}", url=f"http://127.0.0.1:{9000 + i}") for i in range(len(served))]
    pool = BackendPool(configs, session_factory=lambda: None)
    for b, name in zip(pool.backends, served):
        b.healthy = True
        b.models = {name: ServedModel(name, 32768)}
    return Router(Catalog(models or {}, pool), pool, RoutingConfig(**routing), AdequacyModel.load())


def route(r: Router, text: str, **body):
    ctx = RequestContext(request_id="t", endpoint="chat", body={"messages": [{"role": "user", "content": text}], **body})
    return r.route(ctx, "auto")


def test_names_give_sizes_and_abilities():
    assert facts_from_name("Qwen/Qwen3-30B-A3B-Instruct-2507").total_b == 30
    assert facts_from_name("Qwen/Qwen3-30B-A3B-Instruct-2507").active_b == 3
    mixtral = facts_from_name("mistralai/Mixtral-8x7B-Instruct-v0.1")
    assert (mixtral.total_b, mixtral.active_b) == (46.7, 12.9)
    assert facts_from_name("microsoft/Phi-3-mini-4k-instruct").total_b == 3.8
    assert facts_from_name("meta-llama/Llama-3.1-8B-Instruct").total_b == 8
    assert facts_from_name("llama1-alpaca-13b").total_b == 13
    assert facts_from_name("some-model").total_b is None
    # a mixture of experts is less able than its total size; an older generation less than its size
    assert ability_b(46.7, 12.9, 1.0) == pytest.approx((46.7 * 12.9) ** 0.5)
    mistral = facts_from_name("mistralai/Mistral-7B-Instruct-v0.2")
    assert ability_b(mistral.total_b, mistral.active_b, mistral.generation) < 7.2


def test_the_catalog_orders_tiers_by_ability_and_the_config_wins():
    r = router()
    assert [r.catalog.get(m).tier for m in (SMALL, MEDIUM, LARGE)] == ["small", "medium", "large"]
    r = router(models={SMALL: ModelConfig(ability=100.0)})  # an operator says the 1.7B answers like a 100B
    assert r.catalog.get(SMALL).tier == "large" and r.catalog.get(SMALL).ability_b == 100.0
    card = r.catalog.get(MEDIUM).card(0)
    assert card["ability_b"] == 8.0 and card["active_params_b"] == 8.0


def test_trivial_small_hard_large_and_the_reason_says_why():
    r = router()
    for text in ("hi there", "What is 2+2?", "What is the capital of France?"):
        assert route(r, text).model.name == SMALL, text
    hard = route(r, PROOF)
    assert hard.model.name == LARGE
    assert "adequacy" in hard.reason and hard.counterfactual.name == LARGE
    small = route(r, "hi there")
    assert small.reason.startswith("tier small: predicted adequacy") and "less energy" in small.reason
    assert 0 < small.adequacy <= 1


def test_the_budget_adapts_and_a_fixed_threshold_does_not():
    r = router()
    start = r.budget.price
    for _ in range(300):  # a stream of prompts that all lose something on smaller tiers
        route(r, "Write a Python function that merges overlapping intervals and explain its complexity.")
    assert r.budget.price != pytest.approx(start)
    assert r.budget.decisions == 300
    fixed = router(threshold=0.5)
    assert fixed.budget.price == pytest.approx(2.0) and not fixed.budget.adaptive
    for _ in range(50):
        route(fixed, PROOF)
    assert fixed.budget.price == pytest.approx(2.0)
    # a very low threshold sends everything small; explicit models never touch the budget
    everything = router(threshold=-1000)
    assert route(everything, PROOF).model.name == SMALL
    ctx = RequestContext(request_id="t", endpoint="chat", body={"messages": [{"role": "user", "content": "hi"}]})
    before = everything.budget.decisions
    assert everything.route(ctx, LARGE).model.name == LARGE and everything.budget.decisions == before


def test_a_quality_target_changes_how_much_goes_small():
    strict, loose = router(quality=0.995), router(quality=0.8)
    assert strict.budget.target == pytest.approx(0.005) and loose.budget.target == pytest.approx(0.2)
    text = "Write a haiku about autumn."
    picks = {name: [route(r, text).model.name for _ in range(400)][-1] for name, r in (("strict", strict), ("loose", loose))}
    order = {SMALL: 0, MEDIUM: 1, LARGE: 2}
    assert order[picks["loose"]] <= order[picks["strict"]]
    assert strict.budget.price > loose.budget.price


def test_scores_explain_every_tier_without_side_effects():
    r = router()
    rs = r.scores({"messages": [{"role": "user", "content": PROOF}]})
    assert len(rs.losses) == 3 and rs.losses[-1] == 0 and rs.losses[0] >= rs.losses[1] > 0
    assert r.budget.decisions == 0


def ask(r: Router, requested: str, text: str = "Say hello."):
    ctx = RequestContext(request_id="t", endpoint="chat", body={"messages": [{"role": "user", "content": text}]})
    return r.route(ctx, requested), ctx


def test_hosted_model_names_tools_hard_code_are_routed_as_auto():
    r = router()
    for name in ("gpt-4o", "gpt-4o-mini", "o3", "claude-sonnet-4-5", "GPT-4.1"):
        route, ctx = ask(r, name)
        assert route.model.name in (SMALL, MEDIUM, LARGE)
        assert ctx.route_reason.startswith(f"{name} is not served here; routed as auto:")
    with pytest.raises(GatewayError) as err:  # anything else unknown is still a 404
        ask(r, "my-typo-model")
    assert err.value.status == 404 and err.value.code == "model_not_found"
    with pytest.raises(GatewayError):  # and operators can turn it off
        ask(router(hosted_names=[]), "gpt-4o")
    # an alias or a served model of that name wins over the pattern
    assert ask(router(aliases={"gpt-4o": "tier:large"}), "gpt-4o")[0].model.name == LARGE


def test_a_tier_with_no_healthy_model_goes_to_the_nearest_one():
    r = router()
    r.pool.backends[2].healthy = False  # the large tier's only backend
    route, ctx = ask(r, "large")
    assert route.model.name == MEDIUM and ctx.route_reason.startswith("no healthy large model; tier")
    route, _ = ask(router(tier_fallback="down"), "small")
    assert route.model.name == SMALL  # healthy: no fallback at all
    r = router(tier_fallback="none")
    r.pool.backends[2].healthy = False
    assert ask(r, "large")[0].model.name == LARGE  # stays; the proxy answers 503
