"""The demo report from synthetic inputs: table means, AUC, HTML token spans, figures, outcome wording."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from vig_udf.demo.report import rank_auc, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
POLICIES = ("all", "vig", "sample", "token", "random", "random_tokens")
ITEMS = [{"conflict": i % 2 == 1} for i in range(40)]  # 20 prior-conflicting test items


def make_runs(vig_correct: tuple[int, ...], all_correct: tuple[int, ...], schedules=("equal_epochs",)):
    """Runs and per-item outcomes: per seed, vig answers the first vig_correct[seed] of the 20 conflicting
    items right, all the first all_correct[seed]; the other policies half; every consistent item right."""
    runs, outcomes = [], {}
    n_conflicting = sum(item["conflict"] for item in ITEMS)
    for schedule in schedules:
        for seed in range(len(vig_correct)):
            for policy in POLICIES:
                k = {"vig": vig_correct[seed], "all": all_correct[seed]}.get(policy, n_conflicting // 2)
                rank = np.cumsum([item["conflict"] for item in ITEMS]) - 1
                correct = np.array([1.0 if not item["conflict"] or rank[i] < k else 0.0
                                    for i, item in enumerate(ITEMS)])
                prior = np.array([0.0 if not item["conflict"] or c else 1.0 for item, c in zip(ITEMS, correct)])
                outcomes[(schedule, policy, seed)] = {"correct": correct, "prior_answer": prior,
                                                      "p_true": 0.2 + 0.6 * correct}
                runs.append({"schedule": schedule, "policy": policy, "seed": seed,
                             "samples_kept": 800 if policy == "all" else 560,
                             "supervised_tokens": (10000 if policy == "all" else 6000) + 10 * seed,
                             "steps": 150 if policy == "all" or schedule == "equal_steps" else 105,
                             "run_id": f"{policy}-{seed}"})
    return runs, outcomes


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


def build(tmp_path, runs_and_outcomes, name="rep"):
    runs, outcomes = runs_and_outcomes
    return write_report(tmp_path / name, runs=runs, outcomes=outcomes, test_items=ITEMS, turns=make_turns(),
                        tokens=make_tokens(), examples=[EXAMPLE], context={"scorer": "demo-aligned", "p": 70,
                                                                          "seeds": [0, 1, 2]}, resamples=500)


def table_rows(md: str, schedule: str = "equal epochs") -> dict[str, list[str]]:
    section = md.split("## Main table", 1)[1].split("## Differences", 1)[0].split(f"### {schedule}", 1)[1]
    rows = {}
    for line in section.split("###", 1)[0].splitlines():
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
    result = build(tmp_path, make_runs((16, 14, 18), (6, 8, 4)))
    md = open(result["paths"]["report.md"], encoding="utf-8").read()

    rows = table_rows(md)
    assert list(rows) == ["all (vanilla)", "vig", "sample", "token", "random", "random_tokens"]
    # columns: policy, seeds, samples, tokens, steps, conflicting acc, prior answers, p(true), consistent acc
    assert rows["vig"][1] == "3"
    assert rows["vig"][5].startswith("0.800 [")  # (16 + 14 + 18) / 60
    assert rows["all (vanilla)"][3] == "10,010.0"  # 10000, 10010, 10020
    assert rows["vig"][6].startswith("0.200 [")  # every wrong conflicting answer is the prior colour
    assert rows["vig"][8] == "1.000 [1.000, 1.000]"
    stat = result["schedules"]["equal_epochs"]["vig"]["acc_conflicting"]
    assert stat["low"] < 0.8 < stat["high"] and stat["items"] == 20 and stat["seeds"] == 3
    assert "[tokens.html](tokens.html)" in md

    items = pd.read_parquet(result["paths"]["items.parquet"])
    assert len(items) == 3 * len(POLICIES) * len(ITEMS)
    assert items[(items.policy == "vig") & items.conflict].correct.mean() == pytest.approx(0.8)

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


def test_a_clear_difference_is_resolved(tmp_path):
    result = build(tmp_path, make_runs((16, 14, 18), (6, 8, 4)))
    md = open(result["paths"]["report.md"], encoding="utf-8").read()
    cmp = result["comparisons"][("equal_epochs", "vig", "all")]
    assert cmp["acc_conflicting"]["mean"] == pytest.approx(0.5)  # 0.8 - 0.3
    assert cmp["acc_conflicting"]["excludes_zero"] and cmp["acc_conflicting"]["low"] > 0.2
    assert cmp["prior_rate_conflicting"]["mean"] == pytest.approx(-0.5)
    assert cmp["token_ratio"] == pytest.approx(6010 / 10010)
    line = next(l for l in md.split("## Outcome", 1)[1].splitlines() if l.startswith("- vig - all (vanilla)"))
    assert "conflicting accuracy +0.500 [" in line and "vig higher, resolved" in line


def test_a_difference_inside_the_noise_is_not_resolved(tmp_path):
    result = build(tmp_path, make_runs((12, 6, 10), (8, 10, 6)))
    cmp = result["comparisons"][("equal_epochs", "vig", "all")]
    assert cmp["acc_conflicting"]["mean"] == pytest.approx((28 - 24) / 60)
    assert not cmp["acc_conflicting"]["excludes_zero"]
    md = open(result["paths"]["report.md"], encoding="utf-8").read()
    assert "not resolved: the interval includes 0" in md.split("### equal epochs", 2)[2]


def test_both_schedules_get_tables_and_differences(tmp_path):
    result = build(tmp_path, make_runs((16, 14), (6, 8), schedules=("equal_epochs", "equal_steps")))
    md = open(result["paths"]["report.md"], encoding="utf-8").read()
    assert table_rows(md, "equal steps")["vig"][4] == "150.0"
    assert table_rows(md, "equal epochs")["vig"][4] == "105.0"
    assert result["comparisons"][("equal_steps", "vig", "random_tokens")] is not None
    assert md.count("| equal steps | vig - random_tokens |") == 1


def test_single_seed_and_missing_policy(tmp_path):
    runs, outcomes = make_runs((16,), (6,))
    runs = [r for r in runs if r["policy"] != "random"]
    result = build(tmp_path, (runs, outcomes))
    md = open(result["paths"]["report.md"], encoding="utf-8").read()
    assert table_rows(md)["vig"][5].startswith("0.800 [")  # items resampled, one seed
    assert "- vig - random (" not in md  # random was not trained: no sentence about it
    assert result["comparisons"][("equal_epochs", "vig", "random")] is None


def test_a_policy_missing_under_one_schedule_is_said_to_be_missing(tmp_path):
    runs, outcomes = make_runs((16, 14), (6, 8), schedules=("equal_epochs", "equal_steps"))
    runs = [r for r in runs if not (r["policy"] == "random" and r["schedule"] == "equal_steps")]
    md = open(build(tmp_path, (runs, outcomes))["paths"]["report.md"], encoding="utf-8").read()
    assert "- vig - random (equal steps): not available" in md
    assert "- vig - random (equal epochs, 2 seeds): conflicting accuracy" in md
