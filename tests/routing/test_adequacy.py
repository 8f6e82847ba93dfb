"""The shipped router model: shape of its predictions, the decision rule, the artefact."""

import gzip
import json
import math
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest

from gateway.routing.adequacy import DEFAULT_PATH, FORMAT, AdequacyModel, Tier
from gateway.routing.features import extract, prompt_of
from gateway.routing.quality import QualityBudget, best_trade

REPO = Path(__file__).resolve().parents[2]

TRIVIAL = ["hi there", "What is 2+2?", "What is the capital of France?", "Thanks, that helps!"]
HARD = [
    "Prove that for every integer n >= 1 the sum of the first n odd numbers is n^2. Then use induction and "
    "the binomial theorem to show that a^p - a is divisible by p for every prime p and integer a. Finally, "
    "compute the number of integer solutions (x, y, z) of x + y + z = 100 with 0 <= x, y, z and x <= 40, "
    "justifying every step of the derivation and every inequality you use.",
    "Write a thread-safe LRU cache in C++ with O(1) get and put, templated on key and value types, with a "
    "configurable capacity and an eviction callback. Explain the locking strategy, prove that get and put are "
    "O(1), and write unit tests covering concurrent access from multiple threads.",
]
PROMPTS = TRIVIAL + HARD + ["", "Write a haiku about autumn.",
                            "Which of the following is a prime number?\nOptions:\nA. 21\nB. 27\nC. 29\nD. 33",
                            "Summarise: " + "the cat sat on the mat. " * 800]
LADDERS = [[8, 70.6], [1.7, 8, 32, 70], [0.5, 3.8, 14, 72, 405], [7, 8, 9, 49, 51], [70, 70]]


@pytest.fixture(scope="module")
def model():
    return AdequacyModel.load()


def feats(text, **kw):
    return extract(prompt_of([{"role": "user", "content": text}]), **kw)


def tiers(sizes):
    return [Tier(s, s) for s in sizes]


def test_losses_shrink_up_the_ladder_and_the_top_loses_nothing(model):
    for text in PROMPTS:
        for knobs in ({}, {"max_tokens": 16, "has_tools": True, "reasoning": True}):
            f = feats(text, **knobs)
            for sizes in LADDERS:
                rs = model.route_scores(f, tiers(sizes))
                assert len(rs.losses) == len(sizes) and rs.losses[-1] == 0.0 and rs.adequacy[-1] == 1.0
                assert all(0.0 <= x <= 1.0 for x in rs.losses + rs.adequacy)
                assert all(a >= b for a, b in zip(rs.losses, rs.losses[1:])), (text[:30], sizes, rs.losses)
                assert rs.savings[-1] == 0.0 and all(0 <= s < 1 for s in rs.savings)


def test_a_smaller_tier_loses_more_against_the_same_top(model):
    f = feats(HARD[0])
    loss = lambda small: model.route_scores(f, tiers([small, 70])).losses[0]  # noqa: E731
    assert loss(1.7) > loss(8) > loss(32) > 0


def test_trivial_prompts_are_less_sensitive_than_hard_ones(model):
    for t in TRIVIAL:
        for h in HARD:
            assert model.sensitivity(feats(t))[0] < model.sensitivity(feats(h))[0], (t, h[:30])


def test_ability_not_size_decides_the_loss(model):
    f = feats(HARD[0])
    # the same two sizes; an older, weaker small model loses more
    same = model.route_scores(f, [Tier(7.0, 7.0), Tier(47.0, 47.0)]).losses[0]
    weaker = model.route_scores(f, [Tier(1.3, 7.0), Tier(47.0, 47.0)]).losses[0]
    assert weaker > same
    # two tiers of equal ability: nothing to lose
    assert model.route_scores(f, [Tier(24.0, 47.0, 13.0), Tier(24.0, 24.0)]).losses[0] == 0.0


def test_unfamiliar_requests_look_more_sensitive(model):
    # no training prompt had tools, a schema or reasoning: each makes the model less sure
    plain = model.sensitivity(feats("Book me a table for two tonight."))
    tools = model.sensitivity(feats("Book me a table for two tonight.", has_tools=True, has_schema=True))
    assert tools[1] > plain[1]
    rs_plain = model.route_scores(feats("Book me a table for two tonight."), tiers([8, 70]))
    rs_tools = model.route_scores(feats("Book me a table for two tonight.", has_tools=True), tiers([8, 70]))
    assert rs_tools.losses[0] > rs_plain.losses[0]


def test_energy_saving_follows_the_ml_energy_power_law(model):
    rs = model.route_scores(feats("hi"), [Tier(8, 8), Tier(70, 70)])
    assert rs.savings[0] == pytest.approx(1 - model.j_per_token(8) / model.j_per_token(70))
    # a mixture of experts costs more than its active size and less than its total
    moe = model.j_per_token(46.7, 12.9)
    assert model.j_per_token(12.9) < moe < model.j_per_token(46.7)


def test_max_tokens_caps_the_expected_answer(model):
    for text in PROMPTS:
        assert model.route_scores(feats(text, max_tokens=4), tiers([8, 70])).tokens <= 4
        assert model.expected_output_tokens(feats(text)) >= 1


def test_best_trade_is_the_lagrangian_choice():
    assert best_trade([0.3, 0.1, 0.0], [0.9, 0.5, 0.0], price=1.0) == 0  # 0.6 > 0.4 > 0
    assert best_trade([0.3, 0.1, 0.0], [0.9, 0.5, 0.0], price=3.0) == 1  # 0.0 < 0.2 > 0
    assert best_trade([0.3, 0.1, 0.0], [0.9, 0.5, 0.0], price=10.0) == 2
    assert best_trade([0.0, 0.0], [0.0, 0.0], price=1.0) == 1  # a tie goes to the larger tier
    assert best_trade([0.0], [0.0], price=1.0) == 0


def test_the_budget_holds_the_average_loss_at_its_target():
    # a stream where every small answer loses 30% and saves 85%: the price settles where about
    # 1 in 6 requests go small (0.3 * 1/6 = 0.05)
    b = QualityBudget(0.05, price=1.0, window=100)
    small = 0
    for _ in range(20_000):
        pick = best_trade([0.3, 0.0], [0.85, 0.0], b.price)
        small += pick == 0
        b.record(0.3 if pick == 0 else 0.0)
    assert b.loss_sum / b.decisions == pytest.approx(0.05, abs=0.005)
    assert small / 20_000 == pytest.approx(1 / 6, abs=0.02)
    # a stream of nearly free small answers: the price falls and everything goes small
    b2 = QualityBudget(0.05, price=100.0, window=100)
    for _ in range(2_000):
        b2.record(0.0 if best_trade([0.01, 0.0], [0.85, 0.0], b2.price) == 0 else 0.0)
    assert best_trade([0.01, 0.0], [0.85, 0.0], b2.price) == 0
    fixed = QualityBudget(0.05, price=7.0, adaptive=False)
    fixed.record(0.9)
    assert fixed.price == pytest.approx(7.0)
    with pytest.raises(ValueError):
        QualityBudget(0.0, 1.0)


def test_deterministic(model):
    again = AdequacyModel.load()
    for text in PROMPTS:
        f = feats(text)
        assert model.route_scores(f, tiers([1.7, 8, 32, 70])) == again.route_scores(f, tiers([1.7, 8, 32, 70]))
    assert model.version == again.version


def test_artefact_ships_in_the_package_and_loads_without_numpy(tmp_path):
    assert DEFAULT_PATH.parent == REPO / "gateway" / "routing"
    assert resources.files("gateway.routing").joinpath(DEFAULT_PATH.name).is_file()
    assert DEFAULT_PATH.stat().st_size < 5_000_000
    code = (
        "import sys; sys.modules['numpy'] = None; sys.modules['scipy'] = None\n"  # stdlib only at run time
        "from gateway.routing.adequacy import AdequacyModel, Tier\n"
        "from gateway.routing.features import extract\n"
        "m = AdequacyModel.load(); print(m.route_scores(extract('What is 2+2?'), [Tier(8, 8), Tier(70, 70)]).adequacy)"
    )
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    p = json.loads(out.stdout)
    assert p[1] == 1.0 and 0 < p[0] <= 1


def test_metadata(model):
    md = model.metadata
    assert model.spec["format"] == FORMAT and len(model.version) == 12
    assert 0.5 < model.default_quality < 1 and model.default_price > 0 and model.default_window >= 1
    assert len(md["data_sha256_16"]) == 16
    assert md["split"]["seed"] == 20250611 and md["split"]["heldout_fraction"] == 0.25
    assert len(md["split"]["heldout_ids"]["mmlu-pro"]) > 2000
    # every replayed scenario kept what the training promised
    assert md["cv"]["replayed"] and all(v["kept"] >= md["cv"]["keep"] for v in md["cv"]["replayed"].values())


def test_load_gzip_and_reject_foreign_files(tmp_path):
    gz = tmp_path / "m.json.gz"
    gz.write_bytes(gzip.compress(DEFAULT_PATH.read_bytes()))
    f = feats(HARD[0])
    assert AdequacyModel.load(gz).route_scores(f, tiers([8, 70])) == AdequacyModel.load().route_scores(f, tiers([8, 70]))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "nudge-adequacy/2"}))
    with pytest.raises(ValueError):
        AdequacyModel.load(bad)


def test_fast_enough_for_the_hot_path(model):
    # loose bound (the real numbers come from bench/router_latency.py): catches an accidental O(n^2)
    long = " ".join(sorted(model.spec["terms"]))[:16_000]
    f = feats(long)
    t = time.perf_counter()
    for _ in range(20):
        model.route_scores(feats(long), tiers([1.7, 8, 32, 70]))
    assert (time.perf_counter() - t) / 20 < 0.02
    assert math.isfinite(model.sensitivity(f)[0])
