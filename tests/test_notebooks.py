"""Notebooks run end to end as plain Python (on a tiny checkpoint instead of the demo model).

Each notebook has its own test with its own assertions; a new notebook without a test fails
``test_every_notebook_has_a_test``.
"""

import html
import re
import runpy
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
TESTED = {"01_score_samples.py", "02_pipeline.py"}


def run_notebook(name: str) -> dict:
    return runpy.run_path(str(NOTEBOOKS / name), run_name="__main__")


def test_every_notebook_has_a_test():
    assert {p.name for p in NOTEBOOKS.glob("*.py")} == TESTED


def test_notebooks_are_databricks_sources():
    for name in TESTED:
        text = (NOTEBOOKS / name).read_text()
        assert text.startswith("# Databricks notebook source\n"), name
        assert text.count("# COMMAND ----------") >= 3 and "# MAGIC %md" in text, name


def test_01_score_samples(tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VIG_MODEL_PATH", tiny_checkpoints["llava"])
    namespace = run_notebook("01_score_samples.py")
    assert len(namespace["results"]) == len(namespace["samples"])
    page = (tmp_path / ".demo" / "token_heatmap.html").read_text()
    assert page.count("<span title=") == sum(r.n_tokens for r in namespace["results"])


@pytest.mark.spark
@pytest.mark.slow
def test_02_pipeline_end_to_end(spark, tiny_checkpoints, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from vig_udf.lake import read_table, table_version

    for name in ("VIG_LAKE", "VIG_RECORDS", "VIG_IMAGE_ROOT", "VIG_MLFLOW_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VIG_MODEL_PATH", tiny_checkpoints["llava"])
    monkeypatch.setenv("VIG_SAMPLES", "12")
    monkeypatch.setenv("VIG_TRAIN_STEPS", "4")
    ns = run_notebook("02_pipeline.py")

    assert ns["spark"] is spark  # the notebook reused the running session
    lake = ns["LAKE"]
    assert Path(lake) == tmp_path / ".demo" / "notebook_lake"
    assert Path(ns["RECORDS"]).is_file() and Path(ns["IMAGE_ROOT"]).is_dir()

    # rows in = rows out through every table; one selection row per scores row and policy
    corpus = read_table(spark, lake + "/corpus")
    scores = read_table(spark, lake + "/scores").toPandas()
    selection = read_table(spark, lake + "/selection").toPandas()
    assert corpus.count() == len(scores) == 12
    assert set(scores.sample_id) == {r[0] for r in corpus.select("sample_id").collect()}
    assert selection.groupby("policy").sample_id.apply(set).to_dict() == {
        "vig": set(scores.sample_id), "random": set(scores.sample_id)}
    assert ns["status_counts"] == scores.status.value_counts().to_dict()
    # the notebook's seed gives ok and text-only rows (if the shapes world changes, pick another seed)
    assert {"ok", "text_only"} <= set(ns["status_counts"])
    kept = selection.groupby("policy").kept.sum().to_dict()
    assert {p: c["kept"] for p, c in ns["selection_counts"].items()} == kept
    assert {p: s["kept_multimodal"] + s["kept_text_only"] for p, s in ns["select_summary"]["policies"].items()} == kept
    assert 0 < kept["vig"] < 12

    # the heatmap: one span per scored token, in order, rebuilding each answer's text exactly
    page = (tmp_path / ".demo" / "notebook_heatmap.html").read_text()
    scored = scores[scores.n_tokens > 0]
    assert len(ns["heatmap_rows"]) == len(scored)
    assert page.count("<span title=") == scored.n_tokens.sum()
    assert page.count('<span title="no VIG"') == scored[scored.status != "ok"].n_tokens.sum()
    conversations = {r["sample_id"]: r["conversations"] for r in corpus.select("sample_id", "conversations").collect()}
    answers = {html.unescape(re.sub(r"<[^>]+>", "", p)) for p in re.findall(r"<p>.*?</p>", page)}
    expected = {t["value"].strip() for sid in scored.sample_id for t in conversations[sid] if t["from"] == "gpt"}
    assert answers == expected

    # the MLflow run: one loss per step, the three tables at the versions the run read, the model
    train = ns["train_summary"]
    assert train["rows"] == kept["vig"] and len(train["losses"]) == 4
    client = MlflowClient(ns["MLFLOW_URI"])
    assert [m.step for m in client.get_metric_history(train["run_id"], "loss")] == [1, 2, 3, 4]
    assert [step for step, _ in ns["loss_history"]] == [1, 2, 3, 4]
    versions = {name: table_version(spark, f"{lake}/{name}") for name in ("corpus", "scores", "selection")}
    assert train["versions"] == versions
    assert {name: d["version"] for name, d in ns["dataset_inputs"].items()} == versions
    run = client.get_run(train["run_id"])
    assert {d.dataset.name: {t.key: t.value for t in d.tags}["delta_version"] for d in run.inputs.dataset_inputs} == {
        name: str(v) for name, v in versions.items()}
    assert {name: c["job"] for name, c in ns["lineage"].items()} == {
        "corpus": "ingest", "scores": "score", "selection": "select"}
    assert {"model", "selection_summary.json"} <= set(ns["artifacts"])
    assert Path(train["model_dir"], "config.json").is_file()

    # the export: the records the vig selection keeps, with a character mask for each
    export = ns["export_summary"]
    assert export["records"] == kept["vig"] and export["selection_id"] == train["selection_id"]
    kept_ids = set(selection[(selection.policy == "vig") & selection.kept].sample_id)
    assert {r["id"] for r in ns["exported"]} == kept_ids == set(ns["mask"]["masks"])
