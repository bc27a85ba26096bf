"""The demo's issue-24 comparisons (vig_udf.demo.variants): the per-kind VIG with its bootstrap over samples, the
per-kind kept rates with Wilson's interval, and which counterfactuals and arms a config asks for."""

import math

import numpy as np
import pandas as pd
import pytest

from vig_udf.demo import variants


def test_arms_and_counterfactuals_follow_the_comparisons():
    assert variants.arms([]) == [] and variants.counterfactuals("drop", []) == ["drop"]
    assert variants.arms(["token_weight", "mismatched"]) == ["vig@mismatched", "vig+token_weight"]
    assert variants.counterfactuals("drop", ["mismatched"]) == ["drop", "mismatched"]
    with pytest.raises(ValueError, match="mismatched already"):
        variants.counterfactuals("mismatched", ["mismatched"])


def test_wilson_interval_matches_its_formula_at_known_points():
    low, high = variants.wilson(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    low, high = variants.wilson(0, 20)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.1611, abs=1e-4)
    assert all(math.isnan(v) for v in variants.wilson(0, 0))


def test_kind_vig_pools_turns_and_resamples_whole_samples():
    turns = pd.DataFrame({"sample_id": ["a", "a", "b", "c"], "kind": ["colour", "colour", "colour", "count"],
                          "vig": [1.0, 3.0, -1.0, 0.5]})
    stats = variants.kind_vig(turns, resamples=2000)
    colour = stats["colour"]
    assert colour["mean"] == pytest.approx(1.0) and (colour["turns"], colour["samples"]) == (3, 2)
    # resampling samples a and b: the mean is 2 (a twice), 1 (a and b) or -1 (b twice), never a turn alone
    assert colour["low"] == pytest.approx(-1.0) and colour["high"] == pytest.approx(2.0)
    assert stats["count"]["low"] == stats["count"]["high"] == 0.5
    assert stats["define"]["turns"] == 0 and math.isnan(stats["define"]["mean"])


def test_kind_kept_counts_each_turn_of_its_kind():
    meta = {"a": {"kinds": ["colour", "define"]}, "b": {"kinds": ["colour"]}, "t": {"kinds": ["text"]}}
    kept = variants.kind_kept({"a": True, "b": False}, meta)
    assert (kept["colour"]["share"], kept["colour"]["turns"]) == (0.5, 2)
    assert (kept["define"]["share"], kept["define"]["turns"]) == (1.0, 1)
    assert kept["count"]["turns"] == 0 and math.isnan(kept["count"]["share"])
    assert np.isclose(kept["colour"]["low"], variants.wilson(1, 2)[0])
