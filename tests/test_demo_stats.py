"""The demo's two-level paired bootstrap against analytic values and simulated coverage."""

from __future__ import annotations

import numpy as np
import pytest

from vig_udf.demo.stats import MDE_FACTOR, bootstrap_means, format_interval, interval, paired_difference


def test_one_seed_gives_the_item_standard_error():
    rng = np.random.default_rng(1)
    correct = (rng.random((1, 2000)) < 0.3).astype(float)
    stat = interval(correct, resamples=2000)
    analytic = correct.std(ddof=0) / np.sqrt(2000)
    assert stat["se"] == pytest.approx(analytic, rel=0.1)
    assert stat["low"] < correct.mean() < stat["high"]
    assert stat["mde"] == pytest.approx(MDE_FACTOR * stat["se"])


def test_seed_and_item_variation_both_widen_the_interval():
    rng = np.random.default_rng(2)
    items = rng.normal(0, 1, size=400)
    without_seed_effect = np.tile(items, (10, 1))
    with_seed_effect = without_seed_effect + rng.normal(0, 1, size=(10, 1))
    assert interval(with_seed_effect)["se"] > 1.5 * interval(without_seed_effect)["se"]


def test_pairing_removes_what_two_policies_share():
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 1, size=(10, 500))  # item and seed effects that both policies have
    a = shared + 0.05 + rng.normal(0, 0.1, size=shared.shape)
    b = shared + rng.normal(0, 0.1, size=shared.shape)
    paired = paired_difference(a, b)
    assert paired["mean"] == pytest.approx(0.05, abs=0.01)
    assert paired["excludes_zero"]
    assert paired["se"] < 0.2 * np.hypot(interval(a)["se"], interval(b)["se"])


def test_the_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(4)
    covered = 0
    for _ in range(120):
        seed_effect = rng.normal(0, 0.05, size=(6, 1))
        p = np.clip(0.7 + seed_effect + rng.normal(0, 0.1, size=(1, 150)), 0, 1)
        outcome = (rng.random((6, 150)) < p).astype(float)
        stat = interval(outcome, resamples=400, seed=int(rng.integers(1 << 30)))
        covered += stat["low"] <= 0.7 <= stat["high"]
    assert 0.8 <= covered / 120 <= 1.0  # percentile intervals with 6 seeds run a little narrow


def test_a_constant_difference_has_a_zero_width_interval():
    a = np.full((3, 50), 0.8)
    stat = paired_difference(a, a - 0.1)
    assert (stat["mean"], stat["low"], stat["high"]) == pytest.approx((0.1, 0.1, 0.1))
    assert format_interval(stat, signed=True) == "+0.100 [+0.100, +0.100]"


def test_bad_matrices_are_refused():
    with pytest.raises(ValueError, match="same seeds and items"):
        paired_difference(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="missing or infinite"):
        bootstrap_means(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"\[seeds, items\]"):
        bootstrap_means(np.zeros(4))
