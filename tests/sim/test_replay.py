"""The marginal cost of a request, from an offline replay of the simulator's load."""

import pytest

from gateway.sim.replay import marginal_costs, replay


def trace(power_model="roofline", arrivals=None):
    return {"model": "Qwen/Qwen3-8B", "params_b": 8.0, "gpus": 1, "gpu": "h100", "seed": 1, "power_model": power_model,
            "max_model_len": 32768, "max_num_seqs": 256, "max_num_batched_tokens": 8192, "kv_capacity": 400_000,
            "now": 10.0, "arrivals": arrivals if arrivals is not None else [
                ("a", 0.0, 200, 300, "stop", False), ("b", 0.05, 2000, 50, "stop", False),
                ("c", 0.10, 100, 300, "stop", False), ("lone", 5.0, 100, 100, "stop", False)]}


@pytest.mark.parametrize("model", ["roofline", "additive"])
def test_marginal_costs_are_positive_and_sharing_a_batch_is_cheaper(model):
    t = trace(model)
    total, span = replay(t)
    assert total > 0 and span > 5.0
    m = marginal_costs(t, ["a", "b", "c", "lone"])
    assert all(v > 0 for v in m.values())
    # requests that share batches cost less at the margin than they take of the total: the sum falls short
    assert sum(m.values()) < total
    # the lone one pays for its whole run: the same request alongside others costs less
    together = trace(model, [("x", 0.0, 100, 100, "stop", False), ("y", 0.0, 100, 100, "stop", False)])
    alone = trace(model, [("x", 0.0, 100, 100, "stop", False)])
    assert marginal_costs(together, ["y"])["y"] < replay(alone)[0]


def test_replay_is_deterministic_and_excluding_everything_leaves_idle():
    t = trace()
    assert replay(t) == replay(t)
    idle, _ = replay(t, ("a", "b", "c", "lone"), horizon=2.0)
    assert idle == pytest.approx(75.0 * 2.0)  # an H100 with a CUDA context, doing nothing
