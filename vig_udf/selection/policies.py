"""Selection policies: which scored samples, and which of their answer tokens, to train on. Pure functions.

A selection is decided per scores row from its status, its sample VIG and its token VIGs, given one
threshold ``tau`` computed over the whole table (see :func:`tau_for`). No model, no Spark: the select
job (``vig_udf.spark.select_job``) runs :func:`select_row` inside ``mapInArrow``; the trainer and tests
can run it on plain arrays.

The threshold. ``p`` is the percentage of multimodal samples (status ``ok``) to keep and ``tau`` is the
``(100 - p)``-th percentile of their sample VIGs, with linear interpolation between order statistics
(Spark's exact ``percentile``, numpy's default): with the n VIGs sorted ascending v_0 <= ... <= v_{n-1},
``h = (n - 1) * (100 - p) / 100`` and ``tau = v_floor(h) + (h - floor(h)) * (v_ceil(h) - v_floor(h))``.
"Top p%" then means exactly: keep every sample with ``VIG >= tau``. With distinct VIGs that keeps
``n - ceil(h)`` samples (n = 10, p = 70: h = 2.7, 7 kept; n = 6, p = 70: h = 1.5, 4 kept). Samples tied at
``tau`` are all kept, so ties can keep more than p% (n = 6, p = 60: h = 2, tau = v_2, and every sample
equal to v_2 is kept). Above a size threshold the job uses ``percentile_approx``, whose ``tau`` is one of
the VIGs (rank error at most n / accuracy); the policy params record which method made ``tau``.

The policies (text-only rows are always kept with every answer token, as in the paper; failed rows are
never kept; ``drop_negative`` removes multimodal samples with VIG < 0 under every policy):

======== ============================================================================================
vig      keep a sample when VIG >= tau; inside it, keep the tokens with token VIG >= tau (the same tau)
sample   keep a sample when VIG >= tau, with all its answer tokens
token    keep every multimodal sample, with the tokens whose token VIG >= tau
random   keep as many multimodal samples as ``vig`` keeps, drawn uniformly (fixed seed), all tokens
random_tokens
         the samples of ``random``'s draw, and inside them each answer token with probability
         ``token_share``: ``vig``'s kept multimodal tokens over the draw's tokens, so that it matches
         ``vig`` in samples and, in expectation, in supervised tokens (the control for token selection);
         with ``tau_by="source"``, each source's share (its kept tokens over its drawn tokens)
all      keep every multimodal sample with all its tokens (vanilla training, as a selection to compare)
======== ============================================================================================

A sample whose token mask keeps no token is not kept (reason ``no_token_vig>=tau``): it would add no
supervision, and a training batch of fully masked labels has an undefined loss. Under ``vig`` this cannot
happen (a mean at or above tau implies a token at or above it) except by float rounding; under ``token``
it drops the samples none of whose tokens reach tau.

Token VIGs (float32 in the scores table) are compared with tau after widening to float64.

Per-source thresholds (``tau_by="source"``). tau is then computed as above within each corpus source, over that
source's ok VIGs, and every row is decided against its own source's tau: each source keeps (about) its top p%,
so a source whose answers score low as a whole is not dropped whole. A null source (a corpus row without one,
or a scores row missing from the corpus version) is one group of its own; a source with no ok row has no tau
(its text-only rows are kept, its failed rows are not, as always).

Token weights (``token_weight="vig"``). Instead of training on the kept tokens with weight 1 each, each kept
token gets a loss weight from its token VIG (:func:`token_weights`): over the m kept tokens of a sample with
token VIGs g_1..g_m, ``w_k = m * softmax(g / temperature)_k``, then the weights above ``w_max`` are set to
``w_max`` and the others scaled up so that the mean stays 1, until none exceeds ``w_max`` (the unique
``w_k = min(w_max, c * exp(g_k / temperature))`` with mean 1). So the weights lie in ``[0, w_max]`` with mean
exactly 1 over the kept tokens, and a sample carries the same total weight (its kept-token count) as under
the hard mask: only the split inside the sample changes, towards the tokens the image helps most (with
temperature 1, ``w`` is proportional to ``p(token | image) / p(token | counterfactual)``, up to the cap). Not
kept tokens weigh 0; text-only samples weigh 1 on every answer token. The mask (``token_keep``) is unchanged.

>>> import numpy as np
>>> tau = tau_for([-0.5, 0.125, 0.25, 0.25, 0.5, 1.0], p=70)
>>> tau
0.1875
>>> row = select_row("ok", 0.25, np.array([1.0, 0.25, 0.25, -0.5]), 4, policy="vig", tau=tau)
>>> row.kept, row.reason, row.token_keep.tolist()
(True, 'vig>=tau', [True, True, True, False])
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vig_udf.scoring.status import OK, TEXT_ONLY

VIG, SAMPLE, TOKEN, RANDOM, RANDOM_TOKENS, ALL = "vig", "sample", "token", "random", "random_tokens", "all"
POLICIES = (VIG, SAMPLE, TOKEN, RANDOM, RANDOM_TOKENS, ALL)
RANDOM_DRAWS = (RANDOM, RANDOM_TOKENS)  # the policies that keep the seeded uniform draw of samples
TAU_GLOBAL, TAU_BY_SOURCE = "global", "source"  # tau_by: one tau over the table, or one per corpus source
TAU_BY = (TAU_GLOBAL, TAU_BY_SOURCE)
HARD_MASK, VIG_WEIGHT = "mask", "vig"  # token_weight: 0/1 mask, or loss weights from token VIG
TOKEN_WEIGHTS = (HARD_MASK, VIG_WEIGHT)

# Reasons: why a row is kept or not. Every row of a selection carries exactly one.
VIG_AT_LEAST_TAU = "vig>=tau"  # vig, sample: sample VIG reached tau
BELOW_TAU = "below_tau"  # vig, sample: sample VIG below tau
TOKEN_VIG_AT_LEAST_TAU = "token_vig>=tau"  # token: kept, with its tokens at or above tau
NO_TOKEN_AT_LEAST_TAU = "no_token_vig>=tau"  # vig, token: not one token reached tau
RANDOM_KEPT = "random_kept"
RANDOM_NOT_CHOSEN = "random_not_chosen"
RANDOM_TOKENS_KEPT = "random_tokens_kept"  # random_tokens: drawn, with its randomly drawn tokens
NO_TOKEN_DRAWN = "no_token_drawn"  # random_tokens: drawn, but not one of its tokens was
ALL_KEPT = "all_kept"  # all: every scorable sample
TEXT_ONLY_KEPT = "text_only_kept_whole"
NEGATIVE_FILTERED = "negative_vig_filtered"  # drop_negative: VIG < 0 (image contradicts the answer)
BUDGET = "budget"  # would be kept, but its source's budget was filled by higher-priority samples
FAILED = "failed:"  # prefix: failed:<status> for scores rows that are not ok or text_only
MISSING_VIG = "missing_vig"  # an ok row without a finite sample VIG (failed:missing_vig)
TOKEN_COUNT_MISMATCH = "token_count_mismatch"  # an ok row whose token_vig length is not n_tokens


@dataclass(frozen=True)
class RowSelection:
    """The decision for one scores row: kept or not, why, and the answer-token mask.

    ``token_keep`` is aligned with the scores row's token arrays (length ``n_tokens``) when kept, and
    empty when not kept.
    """

    kept: bool
    reason: str
    token_keep: np.ndarray

    @property
    def n_tokens_kept(self) -> int:
        return int(self.token_keep.sum())


def tau_quantile(p: float) -> float:
    """The quantile (0..1) whose value is tau for keeping the top ``p`` percent: ``(100 - p) / 100``."""
    if not 0 < p <= 100:
        raise ValueError(f"p is the percentage of multimodal samples to keep, in (0, 100]; got {p!r}")
    return (100.0 - p) / 100.0


def tau_for(vigs: Sequence[float], p: float) -> float | None:
    """tau for keeping the top ``p`` percent of ``vigs`` (linear interpolation; None for no VIGs).

    Computed the way Spark's exact ``percentile`` computes it, so both give the same double.
    """
    q = tau_quantile(p)
    values = np.sort(np.asarray(vigs, dtype=np.float64))
    if values.size == 0:
        return None
    position = (values.size - 1) * q
    lower, higher = math.floor(position), math.ceil(position)
    if lower == higher:
        return float(values[lower])
    return float((higher - position) * values[lower] + (position - lower) * values[higher])


def select_row(
    status: str,
    vig: float | None,
    token_vig: np.ndarray | Sequence[float] | None,
    n_tokens: int | None,
    *,
    policy: str,
    tau: float | None,
    drop_negative: bool = False,
    chosen: bool = False,
    token_draw: np.ndarray | None = None,
    token_share: float | None = None,
) -> RowSelection:
    """Decide one scores row under ``policy`` with threshold ``tau`` (before per-source budgets).

    Args:
        status: the scores row's status (``ok``, ``text_only`` or a failure).
        vig, token_vig, n_tokens: its sample VIG, token VIGs and answer-token count.
        tau: the threshold over the table's multimodal VIGs (:func:`tau_for`); may be None only when the
            table has no multimodal sample, in which case no ok row reaches this function.
        drop_negative: never keep a multimodal sample with VIG < 0.
        chosen: ``random`` and ``random_tokens``: whether the seeded uniform draw picked this sample.
        token_draw, token_share: ``random_tokens`` only: one uniform [0, 1) value per answer token
            (:func:`random_token_draw`) and the probability of keeping a token; a token is kept when its
            value is below the share.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown selection policy {policy!r}; choose from {POLICIES}")
    n = int(n_tokens or 0)
    if status == TEXT_ONLY:
        return RowSelection(True, TEXT_ONLY_KEPT, np.ones(n, dtype=bool))
    if status != OK:
        return _dropped(FAILED + str(status))
    if vig is None or not math.isfinite(vig):
        return _dropped(FAILED + MISSING_VIG)
    token_vig = np.asarray(token_vig if token_vig is not None else [], dtype=np.float64)
    if token_vig.shape != (n,):
        return _dropped(FAILED + TOKEN_COUNT_MISMATCH)
    if drop_negative and vig < 0:
        return _dropped(NEGATIVE_FILTERED)
    if policy == RANDOM:
        return RowSelection(True, RANDOM_KEPT, np.ones(n, dtype=bool)) if chosen else _dropped(RANDOM_NOT_CHOSEN)
    if policy == RANDOM_TOKENS:
        return _random_tokens(n, chosen, token_draw, token_share)
    if policy == ALL:
        return RowSelection(True, ALL_KEPT, np.ones(n, dtype=bool))
    if tau is None:
        raise ValueError("tau is None but the table has an ok row with a VIG: compute tau over the ok rows")
    if policy != TOKEN and vig < tau:
        return _dropped(BELOW_TAU)
    if policy == SAMPLE:
        return RowSelection(True, VIG_AT_LEAST_TAU, np.ones(n, dtype=bool))
    mask = token_vig >= tau
    if not mask.any():
        return _dropped(NO_TOKEN_AT_LEAST_TAU)
    return RowSelection(True, VIG_AT_LEAST_TAU if policy == VIG else TOKEN_VIG_AT_LEAST_TAU, mask)


def token_weights(token_vig, keep, *, temperature: float, w_max: float) -> np.ndarray:
    """float32 loss weights over a sample's answer tokens: 0 off ``keep``; over the kept tokens the capped
    softmax of token VIG / ``temperature`` with mean 1 (see the module docstring), each in ``[0, w_max]``.

    >>> token_weights(np.array([0.0, 0.0, 1.0, 5.0]), np.array([True, True, False, True]), temperature=1.0,
    ...               w_max=2.0).round(4).tolist()
    [0.5, 0.5, 0.0, 2.0]
    """
    if not temperature > 0:
        raise ValueError(f"token weight temperature must be > 0, got {temperature!r}")
    if not w_max >= 1:
        raise ValueError(f"token weight w_max must be >= 1 (the weights' mean is 1), got {w_max!r}")
    keep = np.asarray(keep, dtype=bool)
    weights = np.zeros(keep.shape, dtype=np.float64)
    m = int(keep.sum())
    if m:
        g = np.asarray(token_vig, dtype=np.float64)[keep] / temperature
        e = np.exp(g - g.max())
        capped = np.zeros(m, dtype=bool)
        w = m * e / e.sum()
        while (over := (w > w_max) & ~capped).any():  # at most m rounds: each caps one token more
            capped |= over
            free = ~capped
            w = np.where(capped, w_max, (m - w_max * capped.sum()) * e / e[free].sum())
        weights[keep] = w
    return weights.astype(np.float32)


def row_token_weights(decision: RowSelection, status: str, token_vig, *, temperature: float,
                      w_max: float) -> np.ndarray:
    """The ``token_weight`` of one decided row under ``token_weight="vig"``: empty when not kept, 1 on every
    token of a text-only row, :func:`token_weights` over the kept tokens of a multimodal row."""
    if not decision.kept:
        return np.zeros(0, dtype=np.float32)
    if status == TEXT_ONLY:
        return np.ones(decision.token_keep.shape, dtype=np.float32)
    return token_weights(token_vig, decision.token_keep, temperature=temperature, w_max=w_max)


def _random_tokens(n: int, chosen: bool, token_draw, token_share: float | None) -> RowSelection:
    if not chosen:
        return _dropped(RANDOM_NOT_CHOSEN)
    if token_draw is None or token_share is None or len(token_draw) != n:
        raise ValueError("random_tokens needs one token_draw value per answer token and a token_share")
    mask = np.asarray(token_draw) < token_share
    if not mask.any():
        return _dropped(NO_TOKEN_DRAWN)
    return RowSelection(True, RANDOM_TOKENS_KEPT, mask)


def random_token_draw(seed: int, sample_id: str, n: int) -> np.ndarray:
    """``n`` uniform [0, 1) values for the answer tokens of one sample: the same for a (seed, sample) on every
    run and partitioning, independent across samples."""
    digest = hashlib.sha256(f"{seed}\0{sample_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little")).random(n)


def _dropped(reason: str) -> RowSelection:
    return RowSelection(False, reason, np.zeros(0, dtype=bool))


def is_failure(reason: str) -> bool:
    """Whether a selection reason marks a scores row that failed (never kept, counted apart)."""
    return reason.startswith(FAILED)


def policy_params(
    policy: str,
    *,
    p: float,
    drop_negative: bool,
    tau_method: str,
    budgets: dict[str, int] | None = None,
    corpus_version: int | None = None,
    seed: int | None = None,
    tau_by: str = TAU_GLOBAL,
    token_weight: str = HARD_MASK,
    temperature: float = 1.0,
    w_max: float = 4.0,
) -> dict:
    """Everything that decides a policy's rows besides the scores themselves (stored as JSON per row).

    ``seed`` only matters to the random draws, ``corpus_version`` (where the sources come from) only with
    budgets or ``tau_by="source"``, ``tau_by`` only when per source and ``temperature`` and ``w_max`` only with
    ``token_weight="vig"``, so each is recorded only where it changes the result (and the params of a
    selection made without the newer options are those it always had). ``random_tokens`` with
    ``tau_by="source"`` also records ``token_share_by="source"``: its token share is each source's, which it was
    not before (one share for the table), so such a selection gets another id than one made that way.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown selection policy {policy!r}; choose from {POLICIES}")
    if tau_by not in TAU_BY:
        raise ValueError(f"unknown tau_by {tau_by!r}; choose from {TAU_BY}")
    if token_weight not in TOKEN_WEIGHTS:
        raise ValueError(f"unknown token_weight {token_weight!r}; choose from {TOKEN_WEIGHTS}")
    params: dict = {"policy": policy, "p": float(p), "drop_negative": bool(drop_negative), "tau_method": tau_method,
                    "budgets": dict(sorted(budgets.items())) if budgets else None}
    if budgets or tau_by == TAU_BY_SOURCE:
        params["corpus_version"] = corpus_version
    if tau_by == TAU_BY_SOURCE:
        params["tau_by"] = tau_by
    if token_weight == VIG_WEIGHT:
        params["token_weight"] = {"method": token_weight, "temperature": float(temperature), "w_max": float(w_max)}
    if policy in RANDOM_DRAWS:
        params["seed"] = seed
    if policy == RANDOM_TOKENS and tau_by == TAU_BY_SOURCE:  # each source's token share (one share before)
        params["token_share_by"] = TAU_BY_SOURCE
    return params


def params_json(params: dict) -> str:
    """The canonical JSON of policy params (sorted keys, no spaces): what is stored and hashed."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def params_hash(params: dict) -> str:
    """A short stable hash of policy params (16 hex digits of SHA-256 of :func:`params_json`)."""
    return hashlib.sha256(params_json(params).encode()).hexdigest()[:16]


def selection_id(*, scorer_id: str, scores_version: int, params_hash: str) -> str:
    """The identity of one selection: scorer, scores table version and policy params (16 hex digits).

    Rows of the selection table with the same ``selection_id`` come from one run; the trainer pins one.
    """
    key = json.dumps([scorer_id, int(scores_version), params_hash])
    return hashlib.sha256(key.encode()).hexdigest()[:16]
