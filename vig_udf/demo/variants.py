"""The demo's optional comparisons of issue 24 (docs/demo_benchmark.md, "The mismatched-image counterfactual and
soft token weights"): each adds one arm, trained per seed next to ``vig`` and compared with it paired by seed
and item.

- ``mismatched``: the corpus is scored once more under ``counterfactual=mismatched`` (in the same score job:
  one real-image pass shared), the arm :data:`VIG_MISMATCHED` trains on ``vig``'s selection made with that
  scorer; the gate is measured for it too (criterion 3m instead of 3), and the report gets the per-kind VIG of
  both scorers and the per-kind kept rates of both selections.
- ``token_weight``: the arm :data:`VIG_WEIGHTED` trains on ``vig``'s samples under the main scorer with the soft
  token weights of ``token_weight=vig`` instead of the 0/1 mask.
"""

from __future__ import annotations

import math

import numpy as np

MISMATCHED, TOKEN_WEIGHT = "mismatched", "token_weight"
COMPARISONS = (MISMATCHED, TOKEN_WEIGHT)
VIG_MISMATCHED = "vig@mismatched"  # vig selected with the mismatched-image scorer
VIG_WEIGHTED = "vig+token_weight"  # vig's samples with token_weight=vig
ARMS = {MISMATCHED: VIG_MISMATCHED, TOKEN_WEIGHT: VIG_WEIGHTED}
KINDS = ("colour", "where", "count", "size", "define")
RESAMPLES = 4000


def arms(comparisons) -> list[str]:
    """The extra training arms of ``comparisons`` (each trained per seed like a policy)."""
    return [ARMS[c] for c in COMPARISONS if c in comparisons]


def counterfactuals(main: str, comparisons) -> list[str]:
    """The counterfactuals the demo's score job scores: the main one, and ``mismatched`` for that comparison."""
    if MISMATCHED not in comparisons:
        return [main]
    if main == MISMATCHED:
        raise ValueError("comparisons=[mismatched] compares the mismatched counterfactual with the demo's own, "
                         "which is mismatched already: set scorer.counterfactual to another (drop, the gate's)")
    return [main, MISMATCHED]


def kind_vig(turns, *, resamples: int = RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """Per answer kind: the mean turn VIG with a 95% bootstrap interval over samples (a sample's turns are
    resampled together: they share an image), and the number of turns and samples."""
    out = {}
    for kind in KINDS:
        rows = turns[turns.kind == kind] if len(turns) else turns
        if not len(rows):
            out[kind] = {"mean": math.nan, "low": math.nan, "high": math.nan, "turns": 0, "samples": 0}
            continue
        per_sample = rows.groupby("sample_id")["vig"].agg(["sum", "count"])
        sums, counts = per_sample["sum"].to_numpy(float), per_sample["count"].to_numpy(float)
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(sums), size=(resamples, len(sums)))
        means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
        low, high = np.quantile(means, [0.025, 0.975])
        out[kind] = {"mean": float(sums.sum() / counts.sum()), "low": float(low), "high": float(high),
                     "turns": int(counts.sum()), "samples": int(len(sums))}
    return out


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's 95% interval of a proportion ``k / n``."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def kind_kept(kept: dict[str, bool], meta: dict) -> dict[str, dict]:
    """Per answer kind: the share of its turns whose sample the selection keeps, with Wilson's interval
    (``kept``: sample id -> kept, for the selection's multimodal rows)."""
    out = {}
    for kind in KINDS:
        flags = [kept[s] for s, info in meta.items() if s in kept for k in info["kinds"] if k == kind]
        low, high = wilson(sum(flags), len(flags))
        out[kind] = {"share": sum(flags) / len(flags) if flags else math.nan, "low": low, "high": high,
                     "turns": len(flags)}
    return out


def _cell(stat: dict, key: str = "mean") -> str:
    value = stat[key]
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+.3f} [{stat['low']:+.3f}, {stat['high']:+.3f}]" if key == "mean" else \
        f"{value:.1%} [{stat['low']:.1%}, {stat['high']:.1%}]"


def section(*, main_cf: str, vig_by_kind: dict[str, dict], kept_by_kind: dict[str, dict],
            gates: dict[str, list[str]], weights: dict | None) -> list[str]:
    """The report's section on these comparisons (markdown lines); the training differences are in the report's
    Differences and Outcome sections (rows ``vig@mismatched - vig`` and ``vig+token_weight - vig``)."""
    md = ["", "## Counterfactuals and token weights (issue 24)", "",
          "Design: docs/demo_benchmark.md, \"The mismatched-image counterfactual and soft token weights\". The "
          "training comparisons are the rows of the arms above (Main table, Differences, Outcome)."]
    for name, lines in gates.items():
        md += ["", f"### Scorer gate, counterfactual {name}", ""] + lines
    if vig_by_kind:
        names = list(vig_by_kind)
        md += ["", "### Turn VIG per answer kind", "",
               "Mean turn VIG (mean token VIG of an answer) with a 95% bootstrap interval over samples. Under "
               f"{main_cf} a VIG is format (an image in the prompt at all) plus content; under mismatched, content "
               "alone (the prompt's form held fixed).", "",
               "| kind | turns | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for kind in KINDS:
            md.append(f"| {kind} | {vig_by_kind[names[0]][kind]['turns']} | "
                      + " | ".join(_cell(vig_by_kind[n][kind]) for n in names) + " |")
    if kept_by_kind:
        names = list(kept_by_kind)
        md += ["", "### What vig keeps, per answer kind", "",
               "The share of each kind's answer turns whose sample vig keeps (p as above), Wilson 95% interval.", "",
               "| kind | turns | " + " | ".join(f"vig with {n}" for n in names) + " |",
               "|---|---|" + "---|" * len(names)]
        for kind in KINDS:
            md.append(f"| {kind} | {kept_by_kind[names[0]][kind]['turns']} | "
                      + " | ".join(_cell(kept_by_kind[n][kind], "share") for n in names) + " |")
    if weights:
        md += ["", "### Token weights", "",
               f"token_weight=vig (temperature {weights['temperature']}, at most {weights['max']}): over vig's kept "
               f"samples the weights sum to {weights['mass']:,.1f} against {weights['tokens']:,} kept tokens of the "
               f"0/1 mask; the largest is {weights['largest']:.3f}."]
    return md
