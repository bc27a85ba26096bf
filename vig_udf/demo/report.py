"""The demo benchmark's report (docs/demo_benchmark.md, "Metrics and report"), from plain inputs.

:func:`write_report` takes the per-run metrics, the per-turn and per-token VIG scores and a few example
conversations as plain Python / pandas objects and writes into one folder:

- ``report.md``: the context, the main table (one row per policy, mean ± std over seeds), an outcome
  section generated from the numbers, the VIG distribution summary and token VIG by word class;
- ``accuracy.png``, ``vig_distribution.png``, ``token_vig_by_class.png``: the figures;
- ``tokens.html``: example conversations with every answer token coloured by its VIG.

No Spark, torch or MLflow here: the caller collects the inputs and logs the folder.

Conventions, fixed here so that the report states them:

- the standard deviation over seeds uses ``ddof=1``; with a single seed it is undefined (NaN, shown as
  "n/a") and no comparison against the seed spread is made;
- "the seed spread" of a difference between two policies is the combined standard deviation
  ``sqrt(std_a**2 + std_b**2)`` (the spread of the difference of two independent runs); a difference
  "exceeds the seed spread" when ``|diff| > combined std``;
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

from vig_udf.report.views import plot_distributions, pyplot, token_view_html

POLICY_ORDER = ("all", "vig", "sample", "token", "random")
POLICY_LABELS = {"all": "all (vanilla)"}

# (key in a run dict, column title, is a count)
METRICS = (
    ("samples_kept", "samples kept", True),
    ("supervised_tokens", "supervised tokens", True),
    ("acc_consistent", "consistent acc", False),
    ("acc_conflicting", "conflicting acc", False),
    ("bias_gap", "bias gap", False),
    ("blind_acc", "blind acc", False),
    ("blind_prior_rate", "blind prior rate", False),
)

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

def _mean_std(values) -> tuple[float, float, int]:
    """Mean, standard deviation (ddof=1; NaN for fewer than two values) and count of the finite values."""
    arr = np.asarray([float(v) for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if n > 1 else math.nan
    return mean, std, n


def policy_order(policies) -> list[str]:
    """The paper's row order (all, vig, sample, token, random), then any other policy alphabetically."""
    present = set(policies)
    return [p for p in POLICY_ORDER if p in present] + sorted(present - set(POLICY_ORDER))


def summarise_runs(runs: list[dict]) -> dict[str, dict]:
    """policy -> {"seeds": [...], "n": int, metric: {"mean", "std", "n"}} over that policy's runs."""
    by_policy: dict[str, list[dict]] = {}
    for run in runs:
        by_policy.setdefault(str(run["policy"]), []).append(run)
    summary = {}
    for policy in policy_order(by_policy):
        rows = by_policy[policy]
        entry = {"seeds": sorted(r.get("seed") for r in rows if r.get("seed") is not None),
                 "n": len(rows), "run_ids": [r.get("run_id") for r in rows]}
        for key, _, _ in METRICS:
            mean, std, n = _mean_std(r.get(key) for r in rows)
            entry[key] = {"mean": mean, "std": std, "n": n}
        summary[policy] = entry
    return summary


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


def compare(summary: dict, a: str, b: str) -> dict | None:
    """Differences ``a - b`` of the outcome metrics, each with the combined seed spread (None if a policy is missing)."""
    if a not in summary or b not in summary:
        return None
    out = {}
    for key in ("acc_conflicting", "bias_gap", "blind_acc", "supervised_tokens"):
        ma, mb = summary[a][key], summary[b][key]
        diff = ma["mean"] - mb["mean"]
        spread = math.sqrt(ma["std"] ** 2 + mb["std"] ** 2)  # NaN when either policy has one seed
        exceeds = None if not math.isfinite(spread) else bool(abs(diff) > spread)
        out[key] = {"a": ma["mean"], "b": mb["mean"], "diff": diff, "spread": spread, "exceeds": exceeds}
    ta, tb = summary[a]["supervised_tokens"]["mean"], summary[b]["supervised_tokens"]["mean"]
    out["supervised_tokens"]["ratio"] = ta / tb if tb else math.nan
    return out


# ----------------------------------------------------------------------------------------------------
# text

def _fmt(value: float, count: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:,.1f}" if count else f"{value:.3f}"


def _pm(stat: dict, count: bool) -> str:
    return f"{_fmt(stat['mean'], count)} ± {_fmt(stat['std'], count)}"


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


def _spread_words(cmp: dict, count: bool) -> str:
    if cmp["exceeds"] is None:
        return "seed spread not measured (a policy has a single seed)"
    word = "larger than" if cmp["exceeds"] else "within"
    return f"{word} the seed spread, combined std {_fmt(cmp['spread'], count)}"


def _diff_words(diff: float, count: bool) -> str:
    if not math.isfinite(diff):
        return "not comparable"
    if diff > 0:
        return f"higher by {_fmt(diff, count)}"
    if diff < 0:
        return f"lower by {_fmt(-diff, count)}"
    return "equal"


def outcome_lines(summary: dict, a: str, b: str) -> list[str]:
    """Factual sentences on ``a`` vs ``b`` (conflicting acc, bias gap, blind acc, supervised tokens)."""
    cmp = compare(summary, a, b)
    la, lb = _label(a), _label(b)
    if cmp is None:
        missing = [p for p in (a, b) if p not in summary]
        return [f"- {la} vs {lb}: not available (no runs for {', '.join(missing)})."]
    lines = []
    for key, name in (("acc_conflicting", "Conflicting accuracy"), ("bias_gap", "Bias gap"),
                      ("blind_acc", "Blind accuracy")):
        c = cmp[key]
        lines.append(f"- {name}: {la} {_fmt(c['a'])} vs {lb} {_fmt(c['b'])}, "
                     f"{_diff_words(c['diff'], False)} ({_spread_words(c, False)}).")
    c = cmp["supervised_tokens"]
    lines.append(f"- Supervised tokens: {la} {_fmt(c['a'], True)} vs {lb} {_fmt(c['b'], True)}, "
                 f"ratio {_fmt(c['ratio'])}; {_diff_words(c['diff'], True)} ({_spread_words(c, True)}).")
    return lines


# ----------------------------------------------------------------------------------------------------
# figures

def _plot_accuracy(summary: dict, path: Path) -> None:
    plt = pyplot()
    policies = list(summary)
    bars = (("acc_conflicting", "conflicting"), ("acc_consistent", "consistent"), ("blind_acc", "blind"))
    x = np.arange(len(policies))
    width = 0.26
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(policies) + 2), 3.8))
    for i, (key, name) in enumerate(bars):
        means = [summary[p][key]["mean"] for p in policies]
        stds = [summary[p][key]["std"] for p in policies]
        stds = [s if math.isfinite(s) else 0.0 for s in stds]
        ax.bar(x + (i - 1) * width, means, width, yerr=stds, capsize=3, label=name)
    ax.set_xticks(x, [_label(p) for p in policies])
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("accuracy (mean ± std over seeds)")
    ax.axhline(0.25, color="grey", lw=0.8, ls=":", label="chance (1/4)")
    ax.legend(fontsize=8, loc="upper center", ncol=4)
    ax.set_title("Test accuracy by policy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------
# the report

def write_report(out_dir, *, runs: list[dict], turns: pd.DataFrame, tokens: pd.DataFrame,
                 examples: list[dict], context: dict, gate: list[str] | None = None) -> dict:
    """Write report.md, the three figures and tokens.html into ``out_dir``; return paths and summary numbers.

    ``gate``: the scorer gate's section (markdown lines, :func:`vig_udf.demo.gate.gate_lines`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: str(out / name) for name in
             ("report.md", "accuracy.png", "vig_distribution.png", "token_vig_by_class.png", "tokens.html")}

    summary = summarise_runs(runs)
    groups = turn_groups(turns)
    group_stats = {key: _describe(groups[key]) for key, _ in GROUPS}
    attr, other = token_classes(tokens)
    class_stats = {"attribute": _describe(attr), "other": _describe(other)}
    auc = rank_auc(attr, other)
    top = top_tokens(tokens)
    comparisons = {"vig_vs_all": compare(summary, "vig", "all"), "vig_vs_random": compare(summary, "vig", "random")}

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

    md += ["", "## Main table", "",
           "Mean ± standard deviation over seeds (ddof=1; n/a with a single seed). Accuracies are on the test "
           "split's colour questions; blind = blurred test image; blind prior rate = share of blurred "
           "prior-conflicting items answered with the shape's typical colour.", ""]
    header = ["policy", "seeds"] + [title for _, title, _ in METRICS]
    md.append("| " + " | ".join(header) + " |")
    md.append("|" + "|".join(["---"] * len(header)) + "|")
    for policy, entry in summary.items():
        cells = [_label(policy), str(entry["n"])] + [_pm(entry[key], count) for key, _, count in METRICS]
        md.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    seeds = sorted({s for entry in summary.values() for s in entry["seeds"]})
    md += ["", f"Seeds: {', '.join(str(s) for s in seeds) or 'none'}.", "", "![accuracy](accuracy.png)"]

    md += ["", "## Outcome", "",
           "Generated from the table above. The seed spread of a difference is the combined standard "
           "deviation sqrt(std_a² + std_b²); a difference is called larger than the seed spread when its "
           "absolute value exceeds it.", "",
           "### vig vs all (vanilla)", ""] + outcome_lines(summary, "vig", "all") + [
           "", "### vig vs random (same sample budget)", ""] + outcome_lines(summary, "vig", "random")

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

    return {"paths": paths, "policies": summary, "groups": group_stats, "token_classes": class_stats,
            "auc": auc, "top_tokens": top, "comparisons": comparisons}
