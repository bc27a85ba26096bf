"""Visual Information Gain from per-token log-probabilities: pure functions, no model, no Spark.

For an answer token a_t scored with the real image I and with a counterfactual image I'::

    token VIG_t = log q(a_t | a_<t, Q, I) - log q(a_t | a_<t, Q, I')
                = NLL_without(a_t) - NLL_with(a_t)

The sample VIG is the unweighted mean of token VIG over all of the sample's answer tokens (every
assistant turn together), which equals log(PPL_without / PPL_with). Positive: the image made the
answer more predictable. Near zero: the text alone predicts it. Negative: the image contradicts it.

>>> import numpy as np
>>> token_vig(np.array([-0.1, -2.0]), np.array([-1.1, -2.0])).tolist()
[1.0, 0.0]
>>> round(sample_vig(np.array([1.0, 0.0])), 3)
0.5
"""

from __future__ import annotations

import math

import numpy as np


def token_vig(logp_with: np.ndarray, logp_without: np.ndarray) -> np.ndarray:
    """Per-token VIG: ``logp_with - logp_without`` (natural log), one value per answer token."""
    logp_with = np.asarray(logp_with, dtype=np.float64)
    logp_without = np.asarray(logp_without, dtype=np.float64)
    if logp_with.shape != logp_without.shape:
        raise ValueError(
            f"logp_with has shape {logp_with.shape} but logp_without has {logp_without.shape}: "
            "both passes must score the same answer tokens"
        )
    return logp_with - logp_without


def mean_nll(logp: np.ndarray) -> float:
    """Mean negative log-likelihood (nats per token) over the given token log-probabilities."""
    logp = np.asarray(logp, dtype=np.float64)
    if logp.size == 0:
        raise ValueError("mean_nll of zero tokens is undefined")
    return float(-logp.mean())


def sample_vig(token_vigs: np.ndarray) -> float:
    """Sample VIG: the mean of token VIG over every answer token of the sample.

    Equal to ``mean_nll(logp_without) - mean_nll(logp_with)``, i.e. the log of the perplexity ratio.
    """
    token_vigs = np.asarray(token_vigs, dtype=np.float64)
    if token_vigs.size == 0:
        raise ValueError("sample_vig of zero tokens is undefined")
    return float(token_vigs.mean())


def perplexity_ratio(vig: float) -> float:
    """PPL(answer | question, counterfactual) / PPL(answer | question, image) = exp(VIG)."""
    return math.exp(vig)
