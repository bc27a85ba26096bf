"""The report of ``vig check``: ``check.md``, ``check.html``, ``check.png`` and ``check.json`` in one folder.

Sections (the same in the markdown and the HTML): the verdict line; Table 1's ordering (sample VIG with the
matching, partly matching and mismatched image, next to the paper's COCO numbers); the mismatched image
(share of answers whose likelihood drops); the counterfactual against the real, mismatched and no-image
prompts (mean NLL per condition and the share of the image's gain it keeps); the most negative VIG tokens
(by token string and single occurrences); the samples they come from with every answer token coloured.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from vig_udf.check import CONDITIONS, PAPER_TABLE1, CheckResult
from vig_udf.report.views import conversation_html, html_page, html_table, legend_html, md_table, pyplot, token_scale

SECTIONS = ("Verdict", "Table 1 ordering", "Mismatched image", "Counterfactual", "Most negative VIG tokens",
            "Samples")
TABLE1_ROWS = (("matching", "real", "vig_matching"), ("partly matching", "partial", "vig_partial"),
               ("conflicting (mismatched)", "mismatched", "vig_mismatched"))
CONDITION_WORDS = {"real": "real image", "counterfactual": "counterfactual", "partial": "partly matching image",
                   "mismatched": "mismatched image", "none": "no image"}
SHORT_NAMES = {"real": "real", "counterfactual": "counterf.", "partial": "partly", "mismatched": "mismatched",
               "none": "no image"}
SAMPLES_SHOWN = 6


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.{digits}f}"


def _pct(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.1%}"


def _tables(result: CheckResult) -> dict[str, tuple[list[str], list[list]]]:
    s = result.summary
    sem = s.get("vig_sem", {})
    paper = list(PAPER_TABLE1.values())
    table1 = [[name, _f(s[key]), _f(sem.get(cond, math.nan)), f"{paper[i]:+.3f}"]
              for i, (name, cond, key) in enumerate(TABLE1_ROWS)]
    nll = [[CONDITION_WORDS[c], f"{s['nll'].get(c, math.nan):.4f}"] for c in CONDITIONS] if s["nll"] else []
    strings = [[repr(r["token"]), r["count"], _f(r["mean_vig"])] for r in s["negative_token_strings"]]
    single = [[repr(r["token"]), _f(r["vig"]), r["sample_id"], r["turn"]] for r in s["negative_tokens"]]
    return {
        "table1": (["image", "mean sample VIG (this check)", "standard error", "paper, COCO (LLaVA-1.5)"], table1),
        "nll": (["condition", "mean answer NLL"], nll),
        "strings": (["token", "count", "mean VIG"], strings),
        "single": (["token", "VIG", "sample", "turn"], single),
    }


def _numbers(result: CheckResult) -> dict[str, list[str]]:
    s, t = result.summary, result.thresholds
    return {
        "Mismatched image": [
            f"Answers less likely with another sample's image than with their own: {_pct(s['mismatch_drop_share'])} "
            f"of {s['n']} (threshold {_pct(t.min_mismatch_drop_share)}).",
            f"Mean answer NLL with the real image {s['nll'].get('real', math.nan):.4f}, with the mismatched image "
            f"{s['nll'].get('mismatched', math.nan):.4f}."],
        "Counterfactual": [
            f"The counterfactual ({result.counterfactual}) keeps {_pct(s['retained_none'])} of the real image's gain "
            f"over the no-image prompt (0% = as uninformative as no image, 100% = as informative as the real image; "
            f"threshold {_pct(t.max_retained)}), and {_pct(s['retained_mismatched'])} of its gain over the "
            "mismatched image.",
            f"Mean |NLL(counterfactual) - NLL(no image)| per sample {s.get('cf_none_mean_abs_gap', math.nan):.4f}; "
            f"mean |NLL(counterfactual) - NLL(real)| {s.get('cf_real_mean_abs_gap', math.nan):.4f}.",
            f"Samples where the counterfactual left every token's likelihood unchanged: {_pct(s['identical_share'])} "
            f"(threshold {_pct(t.max_identical_share)})."],
    }


def _examples(result: CheckResult) -> list[dict]:
    """The samples of the most negative tokens first, then the lowest sample VIG, up to SAMPLES_SHOWN."""
    by_id = {s.sample_id: s for s in result.samples}
    order = [r["sample_id"] for r in result.summary["negative_tokens"]]
    order += [s.sample_id for s in sorted(result.samples, key=lambda s: float(s.vig("real").mean()))]
    picked = list(dict.fromkeys(order))[:SAMPLES_SHOWN]
    out = []
    for sample_id in picked:
        s = by_id[sample_id]
        out.append({"sample_id": sample_id, "questions": [], "answers": s.answers, "token_turn": s.token_turn.tolist(),
                    "token_char_start": s.token_char_start.tolist(), "token_char_end": s.token_char_end.tolist(),
                    "token_vig": s.vig("real").tolist(), "vig": float(s.vig("real").mean()),
                    "mismatched_id": s.mismatched_id, "image": s.image})
    return out


def _thumbnail(image) -> str:
    buf = io.BytesIO()
    thumb = image.copy()
    thumb.thumbnail((160, 160))
    thumb.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plot_check(result: CheckResult, path: Path) -> None:
    """Three panels: mean sample VIG per image (with the paper's values), mean NLL per condition, and the
    per-sample VIG distributions."""
    plt = pyplot()
    s = result.summary
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    names = ["matching", "partly", "mismatched"]
    means = [s["vig_matching"], s["vig_partial"], s["vig_mismatched"]]
    sems = [s.get("vig_sem", {}).get(c, 0.0) for _, c, _ in TABLE1_ROWS]
    sems = [e if e is not None and math.isfinite(e) else 0.0 for e in sems]
    x = np.arange(3)
    axes[0].bar(x, [m if math.isfinite(m) else 0.0 for m in means], yerr=sems, capsize=4, color="#1f77b4",
                label="this check")
    axes[0].scatter(x, list(PAPER_TABLE1.values()), color="#ff7f0e", marker="D", zorder=3, label="paper (COCO)")
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set_xticks(x, names)
    axes[0].set_ylabel("mean sample VIG (nats)")
    axes[0].set_title("Table 1 ordering")
    axes[0].legend(fontsize=8)
    conds = [c for c in CONDITIONS if c in s["nll"]]
    real_nll = s["nll"].get("real", math.nan)
    axes[1].bar(range(len(conds)), [s["nll"][c] - real_nll for c in conds], color="#2ca02c")
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set_xticks(range(len(conds)), [SHORT_NAMES[c] for c in conds], fontsize=8)
    axes[1].set_ylabel("mean answer NLL minus the real image's")
    axes[1].set_title(f"Counterfactual ({result.counterfactual}) keeps {_pct(s['retained_none'])} of the gain")
    per = s.get("per_sample", {})
    for key, label in (("vig_real", "matching"), ("vig_partial", "partly"), ("vig_mismatched", "mismatched")):
        values = np.asarray(per.get(key, []), dtype=float)
        if values.size:
            axes[2].hist(values, bins=20, histtype="step", lw=1.5, label=label)
    axes[2].axvline(0, color="grey", lw=0.8, ls=":")
    axes[2].set_xlabel("sample VIG")
    axes[2].set_title("per-sample VIG")
    axes[2].legend(fontsize=8)
    fig.suptitle(("PASS" if result.passed else "FAIL") + f": vig check, n={s['n']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_check_report(result: CheckResult, out_dir, *, context: dict | None = None) -> dict[str, str]:
    """Write check.md, check.html, check.png and check.json into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: str(out / name) for name in ("check.md", "check.html", "check.png", "check.json")}
    plot_check(result, Path(paths["check.png"]))
    tables, numbers, examples = _tables(result), _numbers(result), _examples(result)
    context = {"scorer_id": result.scorer_id, "counterfactual": result.counterfactual,
               "samples checked": result.summary["n"], "samples left out": result.skipped or "none",
               **(context or {})}

    md = ["# vig check: does the scorer measure grounding?", ""]
    md += [f"- **{k}**: {v}" for k, v in context.items()]
    md += ["", "## Verdict", "", result.verdict(), ""]
    md += ["## Table 1 ordering", "",
           "Sample VIG (mean token VIG of the answers) when the image is the sample's own (matching), its right "
           "half from another sample (partly matching), or another sample's (conflicting), each against the "
           "counterfactual of that image. The paper reports the ordering matching > partly matching > "
           "conflicting on COCO.", ""]
    md += md_table(*tables["table1"]) + ["", "![check](check.png)", ""]
    for section in ("Mismatched image", "Counterfactual"):
        md += [f"## {section}", ""] + [f"- {line}" for line in numbers[section]] + [""]
        if section == "Counterfactual":
            md += md_table(*tables["nll"]) + [""]
    md += ["## Most negative VIG tokens", "",
           "Tokens the real image makes LESS likely than the counterfactual does. The same template token "
           "everywhere (a full stop, a sentence opening) points at a format artifact of the scorer, not at "
           "the images.", "", "By token string:", ""]
    md += md_table(*tables["strings"]) + ["", "Single occurrences:", ""] + md_table(*tables["single"]) + [""]
    md += ["## Samples", "", f"[check.html](check.html) shows {len(examples)} samples with every answer token "
           "coloured by its VIG: " + ", ".join(f"{e['sample_id']} (VIG {_f(e['vig'])})" for e in examples) + ".", ""]
    Path(paths["check.md"]).write_text("\n".join(md), encoding="utf-8")

    scale = token_scale(v for e in examples for v in e["token_vig"])
    css = "pass" if result.passed else "fail"
    body = ["<h1>vig check: does the scorer measure grounding?</h1>",
            html_table(["", ""], [[k, v] for k, v in context.items()]),
            f'<h2>Verdict</h2><p class="verdict {css}" id="verdict">{html.escape(result.verdict())}</p>',
            "<h2>Table 1 ordering</h2>", html_table(*tables["table1"]),
            '<p><img src="check.png" alt="check figure"></p>']
    for section in ("Mismatched image", "Counterfactual"):
        body.append(f"<h2>{section}</h2><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in numbers[section])
                    + "</ul>")
        if section == "Counterfactual":
            body.append(html_table(*tables["nll"]))
    body += ["<h2>Most negative VIG tokens</h2><p>By token string:</p>", html_table(*tables["strings"]),
             "<p>Single occurrences:</p>", html_table(*tables["single"]), "<h2>Samples</h2>", legend_html(scale)]
    for e in examples:
        body.append(f'<img src="{_thumbnail(e["image"])}" alt="image of {html.escape(e["sample_id"])}">')
        body.append(conversation_html(e, scale, heading=f"{e['sample_id']}: VIG {_f(e['vig'])} "
                                                        f"(mismatched with {e['mismatched_id']})"))
    Path(paths["check.html"]).write_text(html_page("vig check", "\n".join(body)), encoding="utf-8")

    data = {"passed": result.passed, "verdict": result.verdict(), "failures": result.failures,
            "thresholds": result.thresholds.__dict__, "skipped": result.skipped, "scorer_id": result.scorer_id,
            "counterfactual": result.counterfactual,
            **{k: v for k, v in result.summary.items() if k != "per_sample"}}
    Path(paths["check.json"]).write_text(json.dumps(data, indent=2, default=float), encoding="utf-8")
    return paths
