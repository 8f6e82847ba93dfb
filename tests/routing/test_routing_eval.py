"""The evaluation code, and the published routing figures reproduced from the committed artefact."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "routing-data"
RESULTS = REPO / "bench" / "results" / "routing-eval.json"


@pytest.fixture(scope="module")
def ev():
    sys.path.insert(0, str(REPO / "bench"))
    import routing_eval

    return routing_eval


def test_apgr_on_a_hand_worked_example(ev):
    # 10 questions: small right on 4, large right on 8; large needed on rows 0..4, small only on row 9
    ys = np.array([0, 0, 0, 0, 0, 1, 1, 1, 0, 1.0])
    yl = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0.0])
    # PGR after k large calls, k = 0..10: gain (k for k <= 5, then 5, 5, 5, 5, 4) / 4
    expect = np.mean([0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.25, 1.25, 1.25, 1.25, 1.0])
    assert ev.apgr(yl - ys, ys, yl) == pytest.approx(expect)
    assert ev.apgr(-(yl - ys), ys, yl) < 0.5 < ev.apgr(yl - ys, ys, yl)


def test_best_saved_respects_ties_and_the_quality_floor(ev):
    ys, yl = np.array([1, 0, 1, 0.0]), np.array([1, 1, 1, 1.0])
    es, el = np.full(4, 1.0), np.full(4, 10.0)
    # small first where the need is lowest: rows 0 and 2 cost nothing, then any other loses 25%
    assert ev.best_saved(np.array([0.1, 0.9, 0.2, 0.8]), ys, yl, es, el) == pytest.approx(1 - 22 / 40)
    # rows 0 and 1 tie: a threshold takes both or neither
    assert ev.best_saved(np.array([0.1, 0.1, 0.9, 0.9]), ys, yl, es, el) == 0.0


@pytest.mark.skipif(not (SHARED / "mmlu-pro-model-outputs").exists(), reason="needs ../shared/routing-data")
def test_the_published_mmlu_pro_figures_are_reproduced(ev):
    """bench/results/routing-eval.json was written by bench/routing_eval.py for the shipped artefact;
    the MMLU-Pro scenarios (shared data only) come out the same again."""
    import routing_data as rd
    import train_router as tr

    from gateway.routing.adequacy import AdequacyModel

    published = json.loads(RESULTS.read_text())
    model = AdequacyModel.load()
    assert published["model_version"] == model.version
    mmlu = rd.load_mmlu(SHARED / rd.MMLU_DIR)
    held = set(model.metadata["split"]["heldout_ids"]["mmlu-pro"])
    sets = {"mmlu-pro": mmlu.subset([i for i, q in enumerate(mmlu.ids) if q in held])}
    results = {r.title: r for r in ev.run(sets, model, tr.EnergyFit.load(), log=lambda *_: None)}
    for row in published["scenarios"]:
        if row["title"] in results:
            r = results[row["title"]]
            assert (round(r.routed_kept, 6), round(r.routed_saved, 6)) == (round(row["routed_kept"], 6),
                                                                          round(row["routed_saved"], 6)), row["title"]
            if r.apgr is not None:
                assert r.apgr == pytest.approx(row["apgr"], abs=1e-9)
    assert "MMLU-Pro: Llama-3.1 8B -> 70B" in results
