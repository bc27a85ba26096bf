"""The demo's scorer gate (docs/demo_benchmark.md, "The scorer gate"): does the aligned scorer read colours,
and does its counterfactual behave like the language prior? Measured on a check split, never the test split.

For every check item the four colour answers are scored with the scorer's own API: ``scorer.score`` gives
each candidate's log-likelihood with the real image and with the configured counterfactual, and the same
model with the ``drop`` counterfactual (:func:`vig_udf.check.drop_variant`) gives it with no image. The
prediction under a condition is the most likely candidate; the answer distribution is the softmax of the
candidates' summed log-likelihoods. :func:`vig_udf.check.check_scorer` also runs on the true answers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from vig_udf.check import CheckResult, check_scorer, drop_variant
from vig_udf.demo.world import COLOURS, TYPICAL_COLOUR, WorldConfig, colour_answer, generate_test
from vig_udf.scoring.status import OK

GATE_SEED_OFFSET = 3000  # the check split's seed is the demo's seed + this (the test split uses + 2000)


@dataclass(frozen=True)
class GateThresholds:
    """The gate's criteria, fixed in docs/demo_benchmark.md before the gate was first run."""

    min_acc_consistent: float = 0.90
    min_acc_conflicting: float = 0.75
    max_prior_distance: float = 0.25  # mean total variation distance, counterfactual vs no image
    # criterion 3m, for counterfactual=mismatched in place of 3 (fixed 2026-12-02 before any run of it): the mean
    # probability of the true colour with the partner's image on prior-conflicting items
    max_p_true_mismatched_conflicting: float = 0.35


@dataclass
class GateResult:
    """The gate's numbers, the criteria that failed (empty = passed) and the ``vig check`` of the split."""

    numbers: dict
    failures: list[str]
    check: CheckResult | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return not self.failures

    def verdict(self) -> str:
        n, t = self.numbers, self.numbers["thresholds"]
        third = (f"p(true colour) with the partner's image on conflicting items {n['p_true_counterfactual_conflicting']:.3f} "
                 f"(need <= {t['max_p_true_mismatched_conflicting']:.2f}; total variation from no image "
                 f"{n['prior_distance']:.3f}, not a criterion here)" if n.get("counterfactual") == "mismatched" else
                 f"counterfactual vs no image: total variation {n['prior_distance']:.3f} "
                 f"(need <= {t['max_prior_distance']:.2f})")
        line = (f"scorer gate {'PASS' if self.passed else 'FAIL'} on {n['items']} check items: accuracy with the "
                f"real image {n['acc_real_consistent']:.3f} consistent / {n['acc_real_conflicting']:.3f} conflicting "
                f"(need >= {t['min_acc_consistent']:.2f} / {t['min_acc_conflicting']:.2f}); {third}; vig check "
                f"{'passes' if n['check_passed'] else 'fails'}")
        if self.failures:
            line += ". Failed: " + "; ".join(self.failures)
        return line


def check_split(n: int, *, seed: int, config: WorldConfig = WorldConfig()) -> list[dict]:
    """The gate's items: balanced colour questions with seed ``seed + GATE_SEED_OFFSET`` (not the test split)."""
    return generate_test(n, seed=seed + GATE_SEED_OFFSET, config=config)


def candidate_records(items: list[dict], partners: dict[str, dict] | None = None) -> list[dict]:
    """One LLaVA record per (item, colour), item-major, in :data:`COLOURS` order; with ``partners`` (item id ->
    the mismatched counterfactual's keys, :func:`item_partners`) every candidate of an item carries its item's."""
    return [{"id": f"{item['id']}:{colour}", "image": item["image"], "conversations": [
        {"from": "human", "value": "<image>\n" + item["question"]},
        {"from": "gpt", "value": colour_answer(item["shape"], colour)}], **(partners or {}).get(item["id"], {})}
        for item in items for colour in COLOURS]


def item_partners(items: list[dict], *, seed: int) -> dict[str, dict]:
    """Item id -> ``counterfactual_partner`` and ``counterfactual_image``: one partner per item by the corpus's
    partner rule (:func:`vig_udf.scoring.partners.assign_partners`), so that an item's four candidates are scored
    against the same other image."""
    from vig_udf.scoring.partners import assign_partners

    found = assign_partners(true_answer_records(items), seed=seed, scope="corpus")
    return {r["id"]: {k: r[k] for k in ("counterfactual_partner", "counterfactual_image")}
            for r in found if "counterfactual_image" in r}


def true_answer_records(items: list[dict]) -> list[dict]:
    return [{"id": item["id"], "image": item["image"], "conversations": [
        {"from": "human", "value": "<image>\n" + item["question"]},
        {"from": "gpt", "value": colour_answer(item["shape"], item["answer"])}]} for item in items]


def _totals(results, n_items: int, which: str) -> np.ndarray:
    bad = [r for r in results if r.status != OK]
    if bad:
        raise RuntimeError(f"the gate's candidates must all score ok; {bad[0].sample_id}: {bad[0].status} {bad[0].error}")
    values = [float(np.sum(r.logp_with if which == "with" else r.logp_without)) for r in results]
    return np.asarray(values).reshape(n_items, len(COLOURS))


def _softmax(scores: np.ndarray) -> np.ndarray:
    z = np.exp(scores - scores.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def measure_gate(scorer, items: list[dict], *, thresholds: GateThresholds = GateThresholds()) -> GateResult:
    """Score the check split's candidates under real / counterfactual / no image, run ``vig check``, decide."""
    mismatched = scorer.options.counterfactual == "mismatched"
    records = candidate_records(items, item_partners(items, seed=scorer.options.partner_seed) if mismatched else None)
    scored = scorer.score(records)
    dropped = drop_variant(scorer).score(records)
    cond = {"real": _totals(scored, len(items), "with"), "counterfactual": _totals(scored, len(items), "without"),
            "none": _totals(dropped, len(items), "without")}
    colours = np.asarray(list(COLOURS))
    truth = np.asarray([item["answer"] for item in items])
    conflict = np.asarray([item["conflict"] for item in items], dtype=bool)
    typical = np.asarray([TYPICAL_COLOUR[item["shape"]] for item in items])
    numbers: dict = {"items": len(items), "thresholds": asdict(thresholds),
                     "counterfactual": scorer.options.counterfactual}
    for name, scores in cond.items():
        predicted = colours[scores.argmax(axis=1)]
        correct = predicted == truth
        numbers[f"acc_{name}_consistent"] = float(correct[~conflict].mean()) if (~conflict).any() else math.nan
        numbers[f"acc_{name}_conflicting"] = float(correct[conflict].mean()) if conflict.any() else math.nan
        numbers[f"prior_rate_{name}_conflicting"] = (float((predicted[conflict] == typical[conflict]).mean())
                                                    if conflict.any() else math.nan)
        true_index = np.asarray([list(COLOURS).index(c) for c in truth])
        p_true = _softmax(scores)[np.arange(len(items)), true_index]
        numbers[f"p_true_{name}"] = float(p_true.mean())
        numbers[f"p_true_{name}_conflicting"] = float(p_true[conflict].mean()) if conflict.any() else math.nan
    numbers["prior_distance"] = float(0.5 * np.abs(_softmax(cond["counterfactual"]) - _softmax(cond["none"]))
                                      .sum(axis=1).mean())
    check = check_scorer(scorer, true_answer_records(items))
    numbers["check_passed"] = check.passed
    numbers["check_verdict"] = check.verdict()
    failures = []
    if not numbers["acc_real_consistent"] >= thresholds.min_acc_consistent:
        failures.append(f"real-image accuracy on prior-consistent items {numbers['acc_real_consistent']:.3f} "
                        f"< {thresholds.min_acc_consistent:.2f}")
    if not numbers["acc_real_conflicting"] >= thresholds.min_acc_conflicting:
        failures.append(f"real-image accuracy on prior-conflicting items {numbers['acc_real_conflicting']:.3f} "
                        f"< {thresholds.min_acc_conflicting:.2f}: the scorer does not read the colours")
    if mismatched:
        if not numbers["p_true_counterfactual_conflicting"] <= thresholds.max_p_true_mismatched_conflicting:
            failures.append(f"with the partner's image the true colour of prior-conflicting items keeps probability "
                            f"{numbers['p_true_counterfactual_conflicting']:.3f} > "
                            f"{thresholds.max_p_true_mismatched_conflicting:.2f}: the mismatched image still tells "
                            "the colour")
    elif not numbers["prior_distance"] <= thresholds.max_prior_distance:
        failures.append(f"the counterfactual's answers are {numbers['prior_distance']:.3f} (total variation) from "
                        f"the no-image prompt's, > {thresholds.max_prior_distance:.2f}: it leaves colour information "
                        f"in the image (conflicting accuracy {numbers['acc_counterfactual_conflicting']:.3f} with it, "
                        f"{numbers['acc_none_conflicting']:.3f} without an image)")
    if not check.passed:
        failures.append("vig check fails: " + "; ".join(check.failures))
    return GateResult(numbers=numbers, failures=failures, check=check)


def gate_lines(gate: GateResult) -> list[str]:
    """The report's gate section (markdown lines)."""
    n = gate.numbers
    rows = [("real image", "real"), ("counterfactual", "counterfactual"), ("no image", "none")]
    md = [gate.verdict(), "",
          "| condition | accuracy, prior-consistent | accuracy, prior-conflicting | prior colour on conflicting | "
          "mean p(true colour) |", "|---|---|---|---|---|"]
    for label, key in rows:
        md.append(f"| {label} | {n[f'acc_{key}_consistent']:.3f} | {n[f'acc_{key}_conflicting']:.3f} | "
                  f"{n[f'prior_rate_{key}_conflicting']:.3f} | {n[f'p_true_{key}']:.3f} |")
    md += ["", f"Total variation distance between the answer distributions with the counterfactual and with no "
               f"image: {n['prior_distance']:.3f}.", "", f"vig check on the check split: {n['check_verdict']} "
           "([check/check.md](check/check.md))."]
    return md
