"""The demo benchmark's report (docs/demo_benchmark.md, "Metrics and report"), from plain inputs.

:func:`write_report` takes the per-run metrics, the per-turn and per-token VIG scores and a few example
conversations as plain Python / pandas objects and writes into one folder:

- ``report.md``: the context, the main table per training schedule (one row per policy, each outcome with
  its 95% interval from the paired bootstrap over seeds and items, :mod:`vig_udf.demo.stats`), the
  pre-registered differences with their intervals and the outcome sentences generated from them, the VIG
  distribution summary and token VIG by word class;
- ``items.parquet``: every run's per-item outcomes (schedule, policy, seed, item), for re-analysis;
- ``accuracy.png``, ``vig_distribution.png``, ``token_vig_by_class.png``: the figures;
- ``tokens.html``: example conversations with every answer token coloured by its VIG.

No Spark, torch or MLflow here: the caller collects the inputs and logs the folder.

Conventions, fixed here so that the report states them:

- an interval is the 95% percentile interval of the two-level bootstrap (seeds and items resampled); a
  difference between two policies is paired (the same seeds and items for both) and is called resolved when
  its interval excludes 0; with a single seed only the items are resampled;
- the rank AUC of attribute over other tokens is the probability that a random attribute token has a
  higher VIG than a random other token, ties counting one half (the Mann-Whitney U statistic of the
  attribute tokens divided by ``n_attribute * n_other``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from vig_udf.demo.stats import RESAMPLES, format_interval, interval, paired_difference
from vig_udf.demo.variants import VIG_MISMATCHED, VIG_WEIGHTED
from vig_udf.report.views import plot_distributions, pyplot, token_view_html

POLICY_ORDER = ("all", "vig", "sample", "token", "random", "random_tokens")
POLICY_LABELS = {"all": "all (vanilla)"}
SCHEDULE_LABELS = {"equal_epochs": "equal epochs", "equal_steps": "equal steps"}

# (metric, per-item outcome, on prior-conflicting items?, column title)
OUTCOME_METRICS = (
    ("acc_conflicting", "correct", True, "conflicting acc"),
    ("prior_rate_conflicting", "prior_answer", True, "prior answers on conflicting"),
    ("p_true_conflicting", "p_true", True, "p(true colour) on conflicting"),
    ("acc_consistent", "correct", False, "consistent acc"),
)
# (a, b, what b controls for): the differences a - b the report gives, the first three pre-registered as
# primary in docs/demo_benchmark.md
COMPARISONS = (
    ("vig", "all", "vanilla: every sample, every token"),
    ("vig", "random", "as many samples, drawn at random"),
    ("vig", "random_tokens", "as many samples and supervised tokens, drawn at random"),
    ("sample", "all", "ablation: sample selection alone"),
    ("token", "all", "ablation: token selection alone"),
    (VIG_MISMATCHED, "vig", "the demo's counterfactual (issue 24: mismatched-image VIG)"),
    (VIG_WEIGHTED, "vig", "the 0/1 token mask (issue 24: soft token weights)"),
)
POWER_TARGET = 0.03  # the difference the design must resolve (issue 10): MDE at 80% power <= 0.03

GROUPS = (
    ("colour_consistent", "colour, prior-consistent"),
    ("colour_conflicting", "colour, prior-conflicting"),
    ("text_answerable", "text-answerable (define, text)"),
    ("other_visual", "other visual (where, count, size)"),
)
TEXT_KINDS = ("define", "text")
OTHER_VISUAL_KINDS = ("where", "count", "size")

TOP_TOKENS = 15
TOP_TOKENS_MIN_COUNT = 5


# ----------------------------------------------------------------------------------------------------
# numbers

def policy_order(policies) -> list[str]:
    """The paper's row order (all, vig, sample, token, random, random_tokens), then any other alphabetically."""
    present = set(policies)
    return [p for p in POLICY_ORDER if p in present] + sorted(present - set(POLICY_ORDER))


def outcome_matrix(outcomes: dict, schedule: str, policy: str, seeds: list[int], outcome: str,
                   items: np.ndarray) -> np.ndarray:
    """[seeds, items]: one per-item outcome of a policy's runs under a schedule, on the selected items."""
    return np.stack([np.asarray(outcomes[(schedule, policy, seed)][outcome], dtype=float)[items] for seed in seeds])


def summarise_runs(runs: list[dict], outcomes: dict, conflict: np.ndarray, *, resamples: int = RESAMPLES) -> dict:
    """schedule -> policy -> {"seeds", "n", "run_ids", count means, and per outcome metric its interval}."""
    by_key: dict[tuple, list[dict]] = {}
    for run in runs:
        by_key.setdefault((run["schedule"], run["policy"]), []).append(run)
    summary: dict[str, dict] = {}
    for schedule in sorted({s for s, _ in by_key}, key=lambda s: list(SCHEDULE_LABELS).index(s)
                           if s in SCHEDULE_LABELS else len(SCHEDULE_LABELS)):
        policies = policy_order(p for s, p in by_key if s == schedule)
        summary[schedule] = {}
        for policy in policies:
            rows = by_key[(schedule, policy)]
            seeds = sorted(r["seed"] for r in rows)
            entry = {"seeds": seeds, "n": len(rows), "run_ids": [r.get("run_id") for r in rows],
                     **{key: float(np.mean([r[key] for r in rows])) for key in ("samples_kept", "supervised_tokens",
                                                                                 "steps")}}
            for metric, outcome, on_conflict, _ in OUTCOME_METRICS:
                items = conflict if on_conflict else ~conflict
                entry[metric] = interval(outcome_matrix(outcomes, schedule, policy, seeds, outcome, items),
                                         resamples=resamples)
            summary[schedule][policy] = entry
    return summary


def compare(summary: dict, outcomes: dict, conflict: np.ndarray, schedule: str, a: str, b: str, *,
            resamples: int = RESAMPLES) -> dict | None:
    """Paired differences ``a - b`` under ``schedule`` of every outcome metric on their common seeds, with
    the token ratio (None when either policy has no runs there)."""
    policies = summary.get(schedule, {})
    if a not in policies or b not in policies:
        return None
    seeds = sorted(set(policies[a]["seeds"]) & set(policies[b]["seeds"]))
    if not seeds:
        return None
    out = {}
    for metric, outcome, on_conflict, _ in OUTCOME_METRICS:
        items = conflict if on_conflict else ~conflict
        out[metric] = paired_difference(outcome_matrix(outcomes, schedule, a, seeds, outcome, items),
                                        outcome_matrix(outcomes, schedule, b, seeds, outcome, items),
                                        resamples=resamples)
    tokens_b = policies[b]["supervised_tokens"]
    out["token_ratio"] = policies[a]["supervised_tokens"] / tokens_b if tokens_b else math.nan
    out["seeds"] = seeds
    return out


def rank_auc(positive, negative) -> float:
    """P(a random ``positive`` value > a random ``negative`` value), ties counting 1/2 (NaN if either is empty)."""
    pos = np.asarray(positive, dtype=float)
    neg = np.asarray(negative, dtype=float)
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    n1, n2 = pos.size, neg.size
    if n1 == 0 or n2 == 0:
        return math.nan
    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks for ties
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    return float(u1 / (n1 * n2))


def _flag(value, want: bool) -> bool:
    """Whether a nullable boolean cell equals ``want`` (None / NaN match neither)."""
    if value is None:
        return False
    try:
        if isinstance(value, float) and math.isnan(value):
            return False
    except TypeError:
        pass
    if value is pd.NA:
        return False
    return bool(value) is want


def _describe(values) -> dict:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"count": 0, "mean": math.nan, "median": math.nan, "std": math.nan}
    return {"count": int(arr.size), "mean": float(arr.mean()), "median": float(np.median(arr)),
            "std": float(arr.std(ddof=1)) if arr.size > 1 else math.nan}


def turn_groups(turns: pd.DataFrame) -> dict[str, np.ndarray]:
    """group key -> turn VIG values (see GROUPS)."""
    if turns is None or len(turns) == 0:
        return {key: np.zeros(0) for key, _ in GROUPS}
    kind = turns["kind"].astype(str)
    conflict = turns["conflict"] if "conflict" in turns else pd.Series([None] * len(turns), index=turns.index)
    vig = turns["vig"].astype(float)
    colour = kind == "colour"
    masks = {
        "colour_consistent": colour & conflict.map(lambda v: _flag(v, False)).astype(bool),
        "colour_conflicting": colour & conflict.map(lambda v: _flag(v, True)).astype(bool),
        "text_answerable": kind.isin(TEXT_KINDS),
        "other_visual": kind.isin(OTHER_VISUAL_KINDS),
    }
    return {key: vig[masks[key]].to_numpy() for key, _ in GROUPS}


def token_classes(tokens: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(attribute token VIG values, other token VIG values)."""
    if tokens is None or len(tokens) == 0:
        return np.zeros(0), np.zeros(0)
    attr = tokens["attribute"].map(lambda v: _flag(v, True)).astype(bool)
    vig = tokens["vig"].astype(float)
    return vig[attr].to_numpy(), vig[~attr].to_numpy()


def top_tokens(tokens: pd.DataFrame, k: int = TOP_TOKENS, min_count: int = TOP_TOKENS_MIN_COUNT) -> list[dict]:
    """The ``k`` token strings with the highest mean VIG among those seen at least ``min_count`` times."""
    if tokens is None or len(tokens) == 0:
        return []
    df = pd.DataFrame({"token": tokens["token"].astype(str), "vig": tokens["vig"].astype(float),
                       "attribute": tokens["attribute"].map(lambda v: _flag(v, True)).astype(float)})
    df = df[np.isfinite(df["vig"])]
    agg = df.groupby("token").agg(count=("vig", "size"), mean=("vig", "mean"), attribute=("attribute", "mean"))
    agg = agg[agg["count"] >= min_count].sort_values(["mean", "count"], ascending=[False, False]).head(k)
    return [{"token": tok, "count": int(row["count"]), "mean_vig": float(row["mean"]),
             "attribute_share": float(row["attribute"])} for tok, row in agg.iterrows()]


# ----------------------------------------------------------------------------------------------------
# text

def _fmt(value: float, count: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:,.1f}" if count else f"{value:.3f}"


def _label(policy: str) -> str:
    return POLICY_LABELS.get(policy, policy)


def _context_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_context_value(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_context_value(v)}" for k, v in value.items())
    return str(value)


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def outcome_line(cmp: dict | None, a: str, b: str, schedule: str) -> str:
    """One factual sentence on the paired difference ``a - b`` in conflicting accuracy under ``schedule``."""
    la, lb, when = _label(a), _label(b), SCHEDULE_LABELS.get(schedule, schedule)
    if cmp is None:
        return f"- {la} - {lb} ({when}): not available (a policy has no runs under this schedule)."
    acc, prior = cmp["acc_conflicting"], cmp["prior_rate_conflicting"]
    if not acc["excludes_zero"]:
        verdict = (f"not resolved: the interval includes 0, and at this power a true difference of "
                   f"{_fmt(acc['mde'])} would be found 80% of the time")
    else:
        verdict = f"{la} {'higher' if acc['mean'] > 0 else 'lower'}, resolved (the interval excludes 0)"
    return (f"- {la} - {lb} ({when}, {len(cmp['seeds'])} seeds): conflicting accuracy "
            f"{format_interval(acc, signed=True)}, {verdict}; prior answers on conflicting items "
            f"{format_interval(prior, signed=True)}; supervised tokens ratio {_fmt(cmp['token_ratio'])}.")


# ----------------------------------------------------------------------------------------------------
# figures

def _plot_accuracy(summary: dict, path: Path) -> None:
    """Conflicting accuracy with its 95% interval, per policy, one group of bars per schedule."""
    plt = pyplot()
    schedules = list(summary)
    policies = policy_order({p for policies in summary.values() for p in policies})
    x = np.arange(len(policies))
    width = 0.8 / max(1, len(schedules))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(policies) + 2), 3.8))
    for i, schedule in enumerate(schedules):
        stats = [summary[schedule].get(p, {}).get("acc_conflicting") for p in policies]
        means = [s["mean"] if s else np.nan for s in stats]
        errors = np.array([[s["mean"] - s["low"], s["high"] - s["mean"]] if s else [0, 0] for s in stats]).T
        ax.bar(x + (i - (len(schedules) - 1) / 2) * width, means, width, yerr=errors, capsize=3,
               label=SCHEDULE_LABELS.get(schedule, schedule))
    ax.set_xticks(x, [_label(p) for p in policies], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("conflicting accuracy (95% interval)")
    ax.axhline(0.25, color="grey", lw=0.8, ls=":", label="chance (1/4)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Prior-conflicting test items: accuracy by policy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# the report

def write_report(out_dir, *, runs: list[dict], outcomes: dict, test_items: list[dict], turns: pd.DataFrame,
                 tokens: pd.DataFrame, examples: list[dict], context: dict, gate: list[str] | None = None,
                 resamples: int = RESAMPLES) -> dict:
    """Write report.md, the three figures, tokens.html and items.parquet into ``out_dir``; return paths and
    summary numbers.

    ``runs``: one dict per (schedule, policy, seed) with its counts; ``outcomes``: (schedule, policy, seed) ->
    the per-item outcomes of :func:`vig_udf.demo.evaluate.item_outcomes` on ``test_items``; ``gate``: the
    scorer gate's section (markdown lines, :func:`vig_udf.demo.gate.gate_lines`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: str(out / name) for name in ("report.md", "accuracy.png", "vig_distribution.png",
                                                "token_vig_by_class.png", "tokens.html", "items.parquet")}

    conflict = np.asarray([item["conflict"] for item in test_items], dtype=bool)
    summary = summarise_runs(runs, outcomes, conflict, resamples=resamples)
    comparisons = {(schedule, a, b): compare(summary, outcomes, conflict, schedule, a, b, resamples=resamples)
                   for schedule in summary for a, b, _ in COMPARISONS}
    _items_table(outcomes, conflict).to_parquet(paths["items.parquet"], index=False)
    groups = turn_groups(turns)
    group_stats = {key: _describe(groups[key]) for key, _ in GROUPS}
    attr, other = token_classes(tokens)
    class_stats = {"attribute": _describe(attr), "other": _describe(other)}
    auc = rank_auc(attr, other)
    top = top_tokens(tokens)

    _plot_accuracy(summary, Path(paths["accuracy.png"]))
    plot_distributions([(name, groups[key]) for key, name in GROUPS], Path(paths["vig_distribution.png"]),
                        "Turn VIG by group", "turn VIG (mean token VIG of the answer)")
    plot_distributions([("attribute tokens", attr), ("other tokens", other)], Path(paths["token_vig_by_class.png"]),
                        f"Token VIG by class (rank AUC attribute > other = {_fmt(auc)})", "token VIG")
    Path(paths["tokens.html"]).write_text(token_view_html(examples), encoding="utf-8")

    md = ["# Demo benchmark report", "", "## Context", ""]
    md += [f"- **{_md_cell(k)}**: {_md_cell(_context_value(v))}" for k, v in context.items()]
    if gate is not None:
        md += ["", "## Scorer gate", ""] + gate
    md += _main_tables(summary, conflict) + ["", "![accuracy](accuracy.png)"]
    md += _difference_lines(comparisons)
    md += _outcome_section(comparisons, {p for policies in summary.values() for p in policies})
    md += ["", "## VIG distribution", "",
           "Turn VIG (mean token VIG of one answer turn), by group.", "",
           "| group | count | mean | median |", "|---|---|---|---|"]
    for key, name in GROUPS:
        s = group_stats[key]
        md.append(f"| {name} | {s['count']} | {_fmt(s['mean'])} | {_fmt(s['median'])} |")
    md += ["", "![VIG distribution](vig_distribution.png)"]

    md += ["", "## Token VIG by class", "",
           "Attribute tokens: colour, position, size and number words; other: template and function words.", "",
           "| class | count | mean | median |", "|---|---|---|---|"]
    for name in ("attribute", "other"):
        s = class_stats[name]
        md.append(f"| {name} | {s['count']} | {_fmt(s['mean'])} | {_fmt(s['median'])} |")
    md += ["", f"Rank AUC of attribute over other tokens (P(attribute VIG > other VIG), ties ½): **{_fmt(auc)}**.",
           "", "![token VIG by class](token_vig_by_class.png)", "",
           f"Highest mean-VIG token strings (at least {TOP_TOKENS_MIN_COUNT} occurrences):", ""]
    if top:
        md += ["| token | count | mean VIG | attribute |", "|---|---|---|---|"]
        for row in top:
            md.append(f"| `{_md_cell(repr(row['token']))}` | {row['count']} | {_fmt(row['mean_vig'])} | "
                      f"{'yes' if row['attribute_share'] >= 0.5 else 'no'} |")
    else:
        md.append("(no token string reaches the minimum count)")

    md += ["", "## Token view", "",
           f"[tokens.html](tokens.html): example conversations ({len(examples)}), every answer token coloured by "
           "its VIG (green positive, red negative, opacity by magnitude).", ""]
    Path(paths["report.md"]).write_text("\n".join(md), encoding="utf-8")

    return {"paths": paths, "schedules": summary, "groups": group_stats, "token_classes": class_stats,
            "auc": auc, "top_tokens": top, "comparisons": comparisons}


def _items_table(outcomes: dict, conflict: np.ndarray) -> pd.DataFrame:
    frames = []
    for (schedule, policy, seed), values in sorted(outcomes.items()):
        frames.append(pd.DataFrame({"schedule": schedule, "policy": policy, "seed": seed,
                                    "item": np.arange(conflict.size), "conflict": conflict,
                                    **{k: np.asarray(v) for k, v in values.items()}}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _main_tables(summary: dict, conflict: np.ndarray) -> list[str]:
    md = ["", "## Main table", "",
          f"Per training schedule and policy: the mean over seeds of the counts, and each outcome with its 95% "
          f"interval (paired bootstrap over seeds and items, docs/demo_benchmark.md). Test items: {conflict.size} "
          f"({int(conflict.sum())} prior-conflicting). Prior answers = share of prior-conflicting items answered "
          "with the shape's typical colour (with the real image); p(true colour) = the mean probability of the "
          "true colour over the four candidate answers. Consistent accuracy is near its ceiling and carries "
          "little information."]
    header = ["policy", "seeds", "samples kept", "supervised tokens", "steps"] + [t for *_, t in OUTCOME_METRICS]
    for schedule, policies in summary.items():
        md += ["", f"### {SCHEDULE_LABELS.get(schedule, schedule)}", "",
               "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        for policy, entry in policies.items():
            cells = [_label(policy), str(entry["n"]), _fmt(entry["samples_kept"], True),
                     _fmt(entry["supervised_tokens"], True), _fmt(entry["steps"], True)]
            cells += [format_interval(entry[metric]) for metric, *_ in OUTCOME_METRICS]
            md.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return md


def _difference_lines(comparisons: dict) -> list[str]:
    md = ["", "## Differences", "",
          "a - b on the same seeds and test items, 95% interval of the paired bootstrap, and the minimum detectable "
          f"difference (MDE: 80% power, two-sided 5%) of conflicting accuracy; the design asks for MDE <= "
          f"{POWER_TARGET} on the first three comparisons.", "",
          "| schedule | a - b | b controls for | conflicting acc | MDE | prior answers | p(true colour) | tokens a / b |",
          "|---|---|---|---|---|---|---|---|"]
    controls = {(a, b): why for a, b, why in COMPARISONS}
    for (schedule, a, b), cmp in comparisons.items():
        if cmp is None:
            continue
        md.append("| " + " | ".join(_md_cell(c) for c in (
            SCHEDULE_LABELS.get(schedule, schedule), f"{_label(a)} - {_label(b)}", controls[(a, b)],
            format_interval(cmp["acc_conflicting"], signed=True), _fmt(cmp["acc_conflicting"]["mde"]),
            format_interval(cmp["prior_rate_conflicting"], signed=True),
            format_interval(cmp["p_true_conflicting"], signed=True), _fmt(cmp["token_ratio"]))) + " |")
    return md


def _outcome_section(comparisons: dict, trained: set[str]) -> list[str]:
    """Outcome sentences for the comparisons between trained policies (under any schedule)."""
    md = ["", "## Outcome", "", "Generated from the differences above, the primary comparisons first."]
    for schedule in dict.fromkeys(s for s, _, _ in comparisons):
        md += ["", f"### {SCHEDULE_LABELS.get(schedule, schedule)}", ""]
        md += [outcome_line(comparisons[(schedule, a, b)], a, b, schedule) for a, b, _ in COMPARISONS
               if {a, b} <= trained]
    return md
