"""The demo benchmark, fast: a few-step aligned model, a small corpus, one seed, every policy, one schedule
(the equal_steps schedule and the runs the two schedules share are planned by code that
tests/test_demo_plan.py tests, and reported by code that tests/test_demo_report.py tests).

Asserts that every table and MLflow run the demo should produce exists, with consistent row counts and
lineage. The full run's numbers go to the report and BENCHMARKS.md, not into assertions.
"""

import json

import pytest
from mlflow.tracking import MlflowClient

from vig_udf.config import DemoConfig
from vig_udf.demo.model import DemoModelConfig
from vig_udf.lake import read_table, table_history

pytestmark = [pytest.mark.spark, pytest.mark.slow]
POLICIES = ["all", "vig", "random_tokens"]  # the select job's tests cover the others
ARMS = ["vig@mismatched", "vig+token_weight"]  # issue 24's comparisons, trained next to vig
DRAWN = ("random", "random_tokens")


def test_demo_produces_every_table_run_and_report(spark, tmp_path):
    from vig_udf.demo.run import run_demo

    lines = []
    model = DemoModelConfig(text_samples=40, text_steps=3, align_samples=40, align_steps=3, batch_size=8)
    # gate=report: this few-step model fails the scorer gate (tests/test_demo_gate.py tests the refusal)
    cfg = DemoConfig(workdir=str(tmp_path), samples=24, test_samples=6, seeds=[0], epochs=1, batch_size=8, policies=POLICIES,
                     schedules=["equal_epochs"],
                     examples=2, system_metrics=False, gate="report", gate_items=6,
                     comparisons=["mismatched", "token_weight"])
    summary = run_demo(cfg, model_config=model, spark=spark, out=lines.append)
    lake = summary["lake"]

    corpus = read_table(spark, lake + "/corpus")
    scores = read_table(spark, lake + "/scores")
    selection = read_table(spark, lake + "/selection")
    # one score job for both counterfactuals: drop (the main scorer) and mismatched, 24 rows each
    assert corpus.count() == 24 and scores.count() == 48
    assert set(summary["scorer_ids"]) == {"drop", "mismatched"}
    assert {r["scorer_id"]: r["count"] for r in scores.groupBy("scorer_id").count().collect()} == {
        summary["scorer_ids"]["drop"]: 24, summary["scorer_ids"]["mismatched"]: 24}
    assert summary["rows_for_scorer"] == 24 and set(summary["rows_by_status"]) <= {"ok", "text_only"}
    ids = {policy: s["selection_id"] for (policy, _), s in summary["selections"].items()}
    assert sorted(ids) == sorted(POLICIES + ARMS)
    assert summary["selections"][("vig@mismatched", None)]["selection_id"] != ids["vig"] != ids["vig+token_weight"]
    for policy, selection_id in ids.items():
        assert selection.where(f"selection_id = '{selection_id}'").count() == 24, policy
    assert table_history(spark, lake + "/selection")[0]["job"] == "select"

    client = MlflowClient(summary["tracking"]["tracking_uri"])
    assert sorted((r["schedule"], r["policy"]) for r in summary["runs"]) == sorted(
        ("equal_epochs", p) for p in POLICIES + ARMS)
    assert len({r["run_id"] for r in summary["runs"]}) == len(POLICIES + ARMS)  # one run per policy
    for row in summary["runs"]:
        run = client.get_run(row["run_id"])
        assert run.data.tags["vig.selection_id"] == row["selection_id"] == ids[row["policy"]]
        assert run.data.params["training.base_model"] == str(tmp_path / "model")
        versions = {d.dataset.name: int({t.key: t.value for t in d.tags}["delta_version"])
                    for d in run.inputs.dataset_inputs}
        assert versions == {"corpus": summary["corpus_version"], "scores": summary["selections"][
            (row["policy"], 0 if row["policy"] in DRAWN else None)]["scores_version"],
            "selection": versions["selection"]}
        for key in ("eval_acc_consistent", "eval_acc_conflicting", "eval_prior_rate_conflicting",
                    "eval_p_true_conflicting"):
            assert 0 <= run.data.metrics[key] <= 1, key
        assert row["trained_token_steps"] == run.data.metrics["supervised_tokens_total"] > 0
        assert row["supervised_tokens"] == summary["selections"][
            (row["policy"], 0 if row["policy"] in DRAWN else None)]["tokens_kept"]
    # vanilla supervises every answer token of every sample; every other policy supervises fewer
    vanilla = next(r for r in summary["runs"] if r["policy"] == "all")
    assert vanilla["samples_kept"] == 24
    assert all(r["supervised_tokens"] <= vanilla["supervised_tokens"] for r in summary["runs"])

    report = summary["report"]
    text = open(report["report"]).read()
    assert all(f"| {p}" in text for p in POLICIES + ARMS) and "## Differences" in text
    assert "vig@mismatched - vig" in text and "vig+token_weight - vig" in text
    assert "## Counterfactuals and token weights (issue 24)" in text and "### Turn VIG per answer kind" in text
    assert "### Scorer gate, counterfactual mismatched" in text and "### Token weights" in text
    assert "## Scorer gate" in text and "FAILS the gate" in text and not summary["gate"].passed
    report_runs = client.search_runs([client.get_experiment_by_name("vig-demo").experiment_id],
                                     filter_string="tags.`vig.kind` = 'report'")
    assert len(report_runs) == 1
    assert {a.path for a in client.list_artifacts(report_runs[0].info.run_id, "report")} >= {
        "report/report.md", "report/tokens.html", "report/items.parquet"}
    meta = json.loads((tmp_path / "corpus" / "meta.json").read_text())
    assert len(meta) == 24 and "demo finished" in lines[-1]
