"""The demo report from synthetic inputs: table means, AUC, HTML token spans, figures, outcome wording."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from vig_udf.demo.report import rank_auc, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
POLICIES = ("all", "vig", "sample", "token", "random")


def make_runs(vig_conflicting: tuple[float, ...], all_conflicting: tuple[float, ...]) -> list[dict]:
    runs = []
    for seed in range(len(vig_conflicting)):
        for policy in POLICIES:
            conflicting = {"vig": vig_conflicting[seed], "all": all_conflicting[seed]}.get(policy, 0.5 + 0.01 * seed)
            consistent = 0.9
            runs.append({
                "policy": policy, "seed": seed,
                "samples_kept": 800 if policy == "all" else 560,
                "supervised_tokens": (10000 if policy == "all" else 6000) + 10 * seed,
                "acc_consistent": consistent, "acc_conflicting": conflicting,
                "bias_gap": consistent - conflicting,
                "blind_acc": 0.6 if policy == "all" else 0.4 + 0.01 * seed,
                "blind_prior_rate": 0.7, "run_id": f"{policy}-{seed}",
            })
    return runs


def make_turns() -> pd.DataFrame:
    rows = []
    for i in range(8):
        rows.append({"sample_id": f"s{i}", "turn": 0, "kind": "colour", "conflict": i % 2 == 0, "vig": 1.0 + i})
        rows.append({"sample_id": f"s{i}", "turn": 1, "kind": "define", "conflict": None, "vig": 0.01 * i})
        rows.append({"sample_id": f"s{i}", "turn": 2, "kind": ("where", "count", "size")[i % 3], "conflict": None,
                     "vig": 0.5})
    rows.append({"sample_id": "t0", "turn": 0, "kind": "text", "conflict": None, "vig": -0.1})
    return pd.DataFrame(rows)


def make_tokens() -> pd.DataFrame:
    rows = []
    for i in range(6):
        rows += [{"sample_id": f"s{i}", "turn": 0, "token": " red", "vig": 2.0 + 0.1 * i, "attribute": True},
                 {"sample_id": f"s{i}", "turn": 0, "token": " The", "vig": 0.0, "attribute": False},
                 {"sample_id": f"s{i}", "turn": 0, "token": " is", "vig": 0.1, "attribute": False}]
    rows.append({"sample_id": "x", "turn": 0, "token": " rare", "vig": 9.0, "attribute": False})
    return pd.DataFrame(rows)


EXAMPLE = {
    "sample_id": "ex1",
    "questions": ["What colour is the circle?", "What is a <triangle>?"],
    "answers": ["  The circle is red.  ", "A shape & more."],
    # turn 0 (after strip): "The circle is red." ; turn 1: "A shape & more."
    "token_turn": [0, 0, 0, 0, 0, 1, 1],
    "token_char_start": [0, 3, 10, 13, 17, 0, 7],
    "token_char_end": [3, 10, 13, 17, 18, 7, 14],
    "token_vig": [0.0, 0.5, -0.2, 2.5, 0.01, 0.3, -1.0],
}


def build(tmp_path, runs, name="rep"):
    return write_report(tmp_path / name, runs=runs, turns=make_turns(), tokens=make_tokens(),
                        examples=[EXAMPLE], context={"scorer": "demo-aligned", "blur_sigma": 3.2, "p": 70,
                                                     "seeds": [0, 1, 2]})


def table_rows(md: str) -> dict[str, list[str]]:
    section = md.split("## Main table", 1)[1].split("##", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| policy"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def test_rank_auc_hand_computed():
    # pairs: 3>2, 3>0, 1<2, 1>0 -> 3/4
    assert rank_auc([3, 1], [2, 0]) == pytest.approx(0.75)
    # a tie counts one half: 1 vs (1, 0) -> (0.5 + 1) / 2
    assert rank_auc([1], [1, 0]) == pytest.approx(0.75)
    assert rank_auc([0], [1]) == 0.0


def test_report_table_figures_and_html(tmp_path):
    result = build(tmp_path, make_runs((0.8, 0.7, 0.9), (0.3, 0.4, 0.2)))
    md = open(result["paths"]["report.md"], encoding="utf-8").read()

    rows = table_rows(md)
    assert list(rows) == ["all (vanilla)", "vig", "sample", "token", "random"]
    # vig conflicting: mean of 0.8, 0.7, 0.9 = 0.800, std (ddof=1) = 0.100; columns: policy, seeds, samples,
    # tokens, consistent, conflicting, ...
    assert rows["vig"][1] == "3"
    assert rows["vig"][5] == "0.800 ± 0.100"
    assert rows["all (vanilla)"][3] == "10,010.0 ± 10.0"  # 10000, 10010, 10020
    assert rows["vig"][6] == "0.100 ± 0.100"  # bias gap 0.9 - conflicting
    assert result["policies"]["vig"]["acc_conflicting"]["mean"] == pytest.approx(0.8)
    assert "- **blur_sigma**: 3.2" in md and "[tokens.html](tokens.html)" in md

    # VIG groups: conflicting colour turns are i = 0, 2, 4, 6 -> vig 1, 3, 5, 7
    assert result["groups"]["colour_conflicting"] == pytest.approx(
        {"count": 4, "mean": 4.0, "median": 4.0, "std": result["groups"]["colour_conflicting"]["std"]})
    assert result["groups"]["text_answerable"]["count"] == 9
    assert result["groups"]["other_visual"]["count"] == 8
    # tokens: every " red" (attribute) above every other token except the one " rare" (9.0)
    assert result["auc"] == pytest.approx((6 * 12) / (6 * 13))
    assert [t["token"] for t in result["top_tokens"]] == [" red", " is", " The"]  # " rare" seen once
    assert "| `' red'` | 6 |" in md

    for name in ("accuracy.png", "vig_distribution.png", "token_vig_by_class.png"):
        with open(result["paths"][name], "rb") as fh:
            assert fh.read(8) == PNG_MAGIC

    page = open(result["paths"]["tokens.html"], encoding="utf-8").read()
    spans = re.findall(r'<span class="tok" style="([^"]*)" title="([^"]*)">(.*?)</span>', page)
    assert len(spans) == len(EXAMPLE["token_vig"])
    assert [s[2] for s in spans] == ["The", " circle", " is", " red", ".", "A shape", " &amp; more"]
    assert spans[3][1] == "VIG +2.500" and "rgba(0,160,60" in spans[3][0]
    assert "rgba(210,40,40" in spans[6][0]
    assert "What is a &lt;triangle&gt;?" in page
    # text outside token spans stays plain: the final "." of turn 1 has no token
    assert " &amp; more</span>.</p>" in page


def test_outcome_clearly_better(tmp_path):
    result = build(tmp_path, make_runs((0.8, 0.7, 0.9), (0.3, 0.4, 0.2)))
    md = open(result["paths"]["report.md"], encoding="utf-8").read()
    outcome = md.split("## Outcome", 1)[1].split("## VIG distribution", 1)[0]
    vs_all = outcome.split("### vig vs random", 1)[0]
    assert "Conflicting accuracy: vig 0.800 vs all (vanilla) 0.300, higher by 0.500 (larger than the seed spread" in vs_all
    assert "Bias gap: vig 0.100 vs all (vanilla) 0.600, lower by 0.500 (larger than the seed spread" in vs_all
    assert "Blind accuracy: vig 0.410 vs all (vanilla) 0.600, lower by 0.190 (larger than the seed spread" in vs_all
    assert "ratio 0.600" in vs_all
    assert result["comparisons"]["vig_vs_all"]["acc_conflicting"]["exceeds"] is True
    assert result["comparisons"]["vig_vs_all"]["supervised_tokens"]["ratio"] == pytest.approx(6010 / 10010)


def test_outcome_within_spread(tmp_path):
    result = build(tmp_path, make_runs((0.6, 0.3, 0.5), (0.4, 0.5, 0.3)))
    md = open(result["paths"]["report.md"], encoding="utf-8").read()
    vs_all = md.split("### vig vs all (vanilla)", 1)[1].split("###", 1)[0]
    assert "Conflicting accuracy: vig 0.467 vs all (vanilla) 0.400, higher by 0.067 (within the seed spread" in vs_all
    assert "larger than the seed spread" not in vs_all.split("Blind accuracy")[0]
    assert result["comparisons"]["vig_vs_all"]["acc_conflicting"]["exceeds"] is False


def test_single_seed_and_missing_policy(tmp_path):
    runs = [r for r in make_runs((0.8,), (0.3,)) if r["policy"] != "random"]
    result = build(tmp_path, runs)
    md = open(result["paths"]["report.md"], encoding="utf-8").read()
    assert table_rows(md)["vig"][5] == "0.800 ± n/a"
    assert "seed spread not measured" in md
    assert "vig vs random: not available (no runs for random)" in md
    assert result["comparisons"]["vig_vs_random"] is None
