"""Energy ratings: Wh per 1,000 answers over each model's last answers, stars among the rated models."""

from __future__ import annotations

import pytest

from gateway.energy.ratings import EnergyRatings
from gateway.telemetry.rating import stars


def test_stars_split_the_range_in_five_equal_sections():
    field = [20.0, 36.0, 51.9, 52.0, 84.0, 100.0]
    assert [stars(wh, field) for wh in field] == [5, 4, 4, 3, 1, 1]
    assert stars(20.0, [20.0]) is None  # one model: no range to place it in
    assert stars(7.0, [7.0, 7.0]) == 5


def test_a_model_is_rated_on_its_last_answers_once_it_has_enough():
    r = EnergyRatings(window=4, min_answers=3)
    for joules in (360.0, 360.0):
        r.observe("big", joules)
    r.observe("small", 36.0)
    assert r.ratings() == {}
    for joules in (36.0, 36.0, 36.0):
        r.observe("small", joules)
    r.observe("big", 3600.0)
    rated = r.ratings()
    assert rated["small"]["stars"] == 5 and rated["big"]["stars"] == 1
    assert rated["big"]["wh_per_1k_answers"] == pytest.approx((360 + 360 + 3600) / 3 / 3.6, rel=1e-3)
    for _ in range(4):  # the window keeps the last 4
        r.observe("big", 36.0)
    assert r.ratings()["big"]["wh_per_1k_answers"] == pytest.approx(10.0)
