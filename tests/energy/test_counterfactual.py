"""The reasoning lengths the reasoning-off credit is learned from."""

import threading

import pytest

from gateway.energy.counterfactual import PRIOR_WEIGHT, PRIORS, WINDOW, ReasoningLengths


def test_prior_then_observed_with_a_window_and_a_cap():
    r = ReasoningLengths()
    assert r.expected("m", "hard") == PRIORS["hard"] and r.expected("m", "weird") == PRIORS["chat"]
    r.observe("m", "chat", 0)  # nothing reasoned: nothing learned
    assert r.expected("m", "chat") == PRIORS["chat"]
    for _ in range(WINDOW * 2):
        r.observe("m", "chat", 900)
    assert r.expected("m", "chat") == pytest.approx((PRIOR_WEIGHT * PRIORS["chat"] + WINDOW * 900) / (PRIOR_WEIGHT + WINDOW))
    assert r.expected("other-model", "chat") == PRIORS["chat"]  # per model
    assert r.credit("m", "chat", completion_tokens=50, max_tokens=100) == 50
    assert r.credit("m", "chat", completion_tokens=500, max_tokens=100) == 0
    assert r.credit("m", "chat", completion_tokens=50, max_tokens=None) == r.expected("m", "chat")


def test_observing_from_several_threads_keeps_the_sums_right():
    r = ReasoningLengths()

    def feed():
        for _ in range(1000):
            r.observe("m", "hard", 100)

    threads = [threading.Thread(target=feed) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.expected("m", "hard") == pytest.approx((PRIOR_WEIGHT * PRIORS["hard"] + WINDOW * 100) / (PRIOR_WEIGHT + WINDOW))
