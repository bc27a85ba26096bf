"""The metric layer against hand-computed numbers."""

import math

import numpy as np
import pytest

from vig_udf.scoring.metric import mean_nll, perplexity_ratio, sample_vig, token_vig


def test_token_and_sample_vig_by_hand():
    logp_with = np.log([0.5, 0.25, 0.9])
    logp_without = np.log([0.25, 0.25, 0.3])
    tv = token_vig(logp_with, logp_without)
    np.testing.assert_allclose(tv, [math.log(2), 0.0, math.log(3)])
    assert sample_vig(tv) == pytest.approx((math.log(2) + math.log(3)) / 3)
    # sample VIG = NLL_without - NLL_with = log(PPL_without / PPL_with)
    assert sample_vig(tv) == pytest.approx(mean_nll(logp_without) - mean_nll(logp_with))
    ppl_with = math.exp(mean_nll(logp_with))
    ppl_without = math.exp(mean_nll(logp_without))
    assert perplexity_ratio(sample_vig(tv)) == pytest.approx(ppl_without / ppl_with)


def test_negative_vig_when_the_image_contradicts():
    assert sample_vig(token_vig(np.log([0.1]), np.log([0.4]))) == pytest.approx(math.log(0.25))


def test_shape_mismatch_and_empty_are_errors():
    with pytest.raises(ValueError, match="same answer tokens"):
        token_vig(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError):
        sample_vig(np.zeros(0))
    with pytest.raises(ValueError):
        mean_nll(np.zeros(0))
