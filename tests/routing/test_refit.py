"""`nudge-gateway router fit`: an operator's labelled prompts become an artefact the gateway loads."""

import json
import random

import pytest

from gateway.cli import main
from gateway.config import ModelConfig
from gateway.routing.adequacy import AdequacyModel, Tier
from gateway.routing.features import extract, prompt_of
from gateway.routing.refit import load_labelled, run

pytest.importorskip("scipy")

SMALL, LARGE = "acme/chat-7b", "acme/chat-70b"


def labelled(path, n=160, seed=0, small_on_easy=0.95, small_on_hard=0.3):
    """Easy chat prompts the 7B answers as well as the 70B, hard code prompts it does not."""
    rng = random.Random(seed)
    topics = ["tea", "rain", "trains", "maps", "owls", "bread", "music", "chess", "rivers", "clocks"]
    with path.open("w") as f:
        for i in range(n):
            t = rng.choice(topics)
            if i % 2:
                text = f"Write a short friendly note thanking my neighbour for the {t}."
                scores = {SMALL: small_on_easy, LARGE: 1.0}
            else:
                text = (f"Implement a lock-free concurrent hash map in C++ for {t} records, prove it linearizable, "
                        f"and write unit tests for resizing under contention, case {i}.")
                scores = {SMALL: small_on_hard, LARGE: 0.9}
            f.write(json.dumps({"messages": [{"role": "user", "content": text}], "scores": scores}) + "\n")
    return path


def test_reads_the_format_and_orders_models_by_ability(tmp_path):
    data = labelled(tmp_path / "d.jsonl", n=4)
    d = load_labelled(data, {})
    assert d.models == [SMALL, LARGE] and d.tiers[0].ability_b < d.tiers[1].ability_b
    d2 = load_labelled(data, {SMALL: ModelConfig(ability=100.0)})  # the config decides the order
    assert d2.models == [LARGE, SMALL]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "scores": {"a": 2}}\n')
    with pytest.raises(SystemExit, match="in \\[0, 1\\]"):
        load_labelled(bad, {})
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(SystemExit, match="bad.jsonl:1"):
        load_labelled(bad, {})


@pytest.mark.parametrize("mode", ["calibrate", "full"])
def test_fit_keeps_the_quality_asked_for_and_writes_a_loadable_artefact(tmp_path, mode):
    out = tmp_path / f"{mode}.json"
    refit = run(labelled(tmp_path / "d.jsonl"), out, {}, mode=mode, keep=0.95, holdout=0.25, log=lambda *_: None)
    assert refit["fit"]["kept"] >= 0.95 and "holdout" in refit
    model = AdequacyModel.load(out)
    assert model.metadata["refit"]["mode"] == mode and model.version != AdequacyModel.load().version
    tiers = [Tier(7.0, 7.0), Tier(70.0, 70.0)]
    easy = model.route_scores(extract(prompt_of([{"role": "user", "content": "Write a short friendly note."}])), tiers)
    hard = model.route_scores(extract(prompt_of([{"role": "user", "content": (
        "Implement a lock-free concurrent hash map in C++, prove it linearizable and test resizing.")}])), tiers)
    assert hard.losses[0] > easy.losses[0]


def test_full_mode_learns_what_the_operator_data_says(tmp_path):
    # an operator whose small model is as good as the large one on hard code prompts too: the refitted
    # weights see less at stake there than the shipped ones do
    data = labelled(tmp_path / "d.jsonl", small_on_hard=0.9)
    out = tmp_path / "m.json"
    run(data, out, {}, mode="full", holdout=0.0, l2=1.0, log=lambda *_: None)
    text = "Implement a lock-free concurrent hash map in C++ for owls records, prove it linearizable."
    f = extract(prompt_of([{"role": "user", "content": text}]))
    assert AdequacyModel.load(out).sensitivity(f)[0] < AdequacyModel.load().sensitivity(f)[0]


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli.json"
    assert main(["router", "fit", "--data", str(labelled(tmp_path / "d.jsonl")), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "held out" in text and "routing: {model:" in text
    assert AdequacyModel.load(out).metadata["refit"]["prompts"] == 160
