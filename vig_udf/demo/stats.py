"""Confidence intervals for the demo benchmark: a two-level paired bootstrap over training seeds and test items.

Every policy is trained once per seed and every model answers the same test items, so an outcome is a
matrix ``[seeds, items]`` per policy (1/0 for a correct answer, or a probability). Two sources of chance move
a policy's score: the training seed (data order, the random draws) and which items the test split happens to
hold. The bootstrap resamples both: a replicate draws the seeds with replacement and, independently, the
items with replacement, and takes the mean over the drawn grid. For a difference between two policies the
same draw is applied to both matrices (paired: the same seeds, the same items), which removes what they
share, such as an item that every model gets wrong.

The interval is the percentile interval of the replicates; the standard error is their standard deviation.
The minimum detectable difference at 80% power and a two-sided 5% level is ``(1.96 + 0.84) * se``.
"""

from __future__ import annotations

import math

import numpy as np

RESAMPLES = 4000
LEVEL = 0.95
MDE_FACTOR = 1.96 + 0.8416  # z(0.975) + z(0.80)
_CHUNK = 500


def bootstrap_means(matrix: np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Replicate means of ``matrix`` ([seeds, items]) with seeds and items each resampled with replacement."""
    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"expected a non-empty [seeds, items] matrix, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("the outcome matrix has missing or infinite values")
    n_seeds, n_items = values.shape
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        size = min(_CHUNK, resamples - start)
        seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=size)  # [size, seeds]
        item_counts = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=size)  # [size, items]
        out[start:start + size] = np.einsum("rs,si,ri->r", seed_counts, values, item_counts) / (n_seeds * n_items)
    return out


def interval(matrix: np.ndarray, *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict:
    """Mean of ``matrix`` ([seeds, items]) with its bootstrap percentile interval, standard error and the
    minimum detectable difference (80% power, two-sided 5%)."""
    values = np.asarray(matrix, dtype=np.float64)
    replicates = bootstrap_means(values, resamples=resamples, seed=seed)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    se = float(replicates.std(ddof=1))
    return {"mean": float(values.mean()), "low": float(low), "high": float(high), "se": se,
            "mde": MDE_FACTOR * se, "seeds": values.shape[0], "items": values.shape[1]}


def paired_difference(a: np.ndarray, b: np.ndarray, **kwargs) -> dict:
    """``a - b`` for two policies' [seeds, items] outcomes on the same seeds and items (paired bootstrap).

    Also ``excludes_zero``: whether the interval lies entirely on one side of 0.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same seeds and items: shapes {a.shape} and {b.shape}")
    out = interval(a - b, **kwargs)
    out["excludes_zero"] = bool(out["low"] > 0 or out["high"] < 0)
    return out


def format_interval(stat: dict, *, signed: bool = False) -> str:
    """``0.812 [0.790, 0.833]`` (``+0.012 [...]`` when signed)."""
    if not stat or not math.isfinite(stat.get("mean", math.nan)):
        return "n/a"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f"{fmt.format(stat['mean'])} [{fmt.format(stat['low'])}, {fmt.format(stat['high'])}]"
