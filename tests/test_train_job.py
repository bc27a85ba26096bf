"""The train job on local Spark: ingest -> score -> select -> train, tracked in a local MLflow store."""

from __future__ import annotations

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.test_spark_jobs import scorer_config, write_corpus
from tests.test_train_loss import Interrupt, interrupt_at
from vig_udf.lake import table_version
from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
from vig_udf.spark.score_job import ScoreJobConfig, run_score
from vig_udf.spark.select_job import SelectJobConfig, run_select
from vig_udf.spark.train_job import DistributedConfig, TrainJobConfig, run_train
from vig_udf.tiny import LLAVA_TEMPLATE

pytestmark = [pytest.mark.spark, pytest.mark.slow]
QUIET = lambda *_: None  # noqa: E731
# the scores are made with an overridden template: training must use it and say so
SCORES_TEMPLATE = LLAVA_TEMPLATE.replace("upper() + ': '", "upper() + ' >> '").replace("'ASSISTANT:'", "'ASSISTANT >>'")


@pytest.fixture(scope="module")
def scored_lake(spark, tmp_path_factory, tiny_checkpoints):
    root = tmp_path_factory.mktemp("train_lake")
    write_corpus(root, n=14, seed=5)
    lake = str(root / "lake")
    run_ingest(spark, IngestJobConfig(input=str(root / "records.json"), image_root=str(root / "images"), lake=lake),
               out=QUIET)
    run_score(spark, ScoreJobConfig(lake=lake, scorer=scorer_config(tiny_checkpoints["llava"], root,
                                                                    chat_template=SCORES_TEMPLATE)), out=QUIET)
    select = run_select(spark, SelectJobConfig(lake=lake, policies=["vig", "random"], p=50), out=QUIET)
    return root, lake, select


def job(root, lake, name: str, **training) -> TrainJobConfig:
    return TrainJobConfig(
        lake=lake, policy="vig", output_dir=str(root / name),
        training={"steps": 8, "batch_size": 4, "learning_rate": 3e-3, "warmup_ratio": 0.0, "checkpoint_every": 4,
                  "image_root": str(root / "images"), **training},
        mlflow={"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "tests",
                "artifact_location": str(root / "artifacts"), "system_metrics": False})


def test_train_job_logs_a_complete_mlflow_run(spark, scored_lake):
    root, lake, select = scored_lake
    summary = run_train(spark, job(root, lake, "run1"), out=QUIET)
    vig = select["policies"]["vig"]
    assert summary["selection_id"] == vig["selection_id"]
    assert summary["rows"] == vig["kept_multimodal"] + vig["kept_text_only"]
    # the base model defaults to the scorer's model, found in the scores table's commit metadata
    assert summary["base_model"] and summary["versions"] == {
        "selection": table_version(spark, lake + "/selection"), "corpus": table_version(spark, lake + "/corpus"),
        "scores": select["scores_version"]}

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(summary["run_id"])
    params, tags = run.data.params, run.data.tags
    assert params["training.steps"] == "8" and params["training.method"] == "full"
    assert params["resolved.selection_id"] == vig["selection_id"] and tags["vig.policy"] == "vig"
    assert tags["vig.scorer_id"] == select["scorer_id"]
    # the scorer by name (model path, family, counterfactual) next to its hash, as vig lake scorers lists it
    assert tags["vig.scorer"] == f"{summary['base_model']}, llava, blur", tags["vig.scorer"]
    assert (tags["vig.chat_template"], tags["vig.image_placement"]) == ("scores", "first")
    # the scores' template is not Vicuna's: the template format, unpadded, both from the scores' commit
    assert (tags["vig.prompt_format"], tags["vig.prompt_format_source"]) == ("template", "scores")
    assert (tags["vig.image_pad"], tags["vig.image_pad_source"]) == ("none", "scores")
    # what end-of-turn text was supervised comes from the counted tokens; the limit is the scores' (none)
    assert (tags["vig.end_of_turn"], tags["vig.end_of_turn_text"]) == ("supervised", "'</s>'")
    assert run.data.metrics["end_of_turn_tokens_total"] > 0 and tags["vig.max_length"] == "None"
    assert run.data.metrics["truncated_samples_total"] == run.data.metrics["truncated_tokens_total"] == 0
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/chat_template.jinja") == SCORES_TEMPLATE
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, 9))
    tokens = client.get_metric_history(run.info.run_id, "supervised_tokens")
    assert all(m.value > 0 for m in tokens) and run.data.metrics["supervised_tokens_total"] == sum(
        m.value for m in tokens)
    inputs = {d.dataset.name: (json.loads(d.dataset.source), {t.key: t.value for t in d.tags})
              for d in run.inputs.dataset_inputs}
    assert {name: (src["path"].endswith(name), src.get("delta_table_version", 0), tags["delta_version"])
            for name, (src, tags) in inputs.items()} == {
        name: (True, version, str(version)) for name, version in summary["versions"].items()}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "selection_summary.json", "skipped_samples.json"} <= artifacts
    model_files = {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"config.json", "model.safetensors", "processor_config.json"} <= model_files or \
        {"config.json", "model.safetensors"} <= model_files
    selection_summary = json.loads(open(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="selection_summary.json", tracking_uri=client._tracking_client.tracking_uri)).read())
    assert selection_summary["kept"] == summary["rows"]


def test_interrupted_train_job_resumes_the_same_run(spark, scored_lake):
    root, lake, _ = scored_lake

    with pytest.raises(Interrupt):
        run_train(spark, job(root, lake, "run2"), out=QUIET, on_step=interrupt_at(5))
    # another selection, other pinned versions or other settings in the same output_dir: refused, named
    with pytest.raises(ValueError, match=r"request\.policy"):
        run_train(spark, job(root, lake, "run2").model_copy(update={"policy": "random"}), out=QUIET)
    with pytest.raises(ValueError, match=r"request\.corpus_version"):
        run_train(spark, job(root, lake, "run2").model_copy(update={"corpus_version": 0}), out=QUIET)
    with pytest.raises(ValueError, match=r"settings\.supervise_end_of_turn"):
        run_train(spark, job(root, lake, "run2", supervise_end_of_turn=False), out=QUIET)
    resumed = run_train(spark, job(root, lake, "run2"), out=QUIET)
    assert resumed["resumed_from_step"] == 4
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    # one run; each step exactly once: steps 5 of the killed run were never sent (no checkpoint after them)
    for metric in ("loss", "supervised_tokens", "learning_rate"):
        assert [m.step for m in client.get_metric_history(resumed["run_id"], metric)] == list(range(1, 9))
    run = client.get_run(resumed["run_id"])
    assert run.data.metrics["supervised_tokens_total"] == sum(
        m.value for m in client.get_metric_history(resumed["run_id"], "supervised_tokens"))
    assert 0 < run.data.metrics["end_of_turn_tokens_total"] < run.data.metrics["supervised_tokens_total"]


def test_train_job_refuses_an_ambiguous_or_unknown_selection(spark, scored_lake):
    root, lake, _ = scored_lake
    with pytest.raises(ValueError, match="matches 0 selections"):
        run_train(spark, job(root, lake, "bad").model_copy(update={"policy": None, "selection_id": "nope"}), out=QUIET)
    with pytest.raises(ValueError, match="exactly one of"):
        TrainJobConfig(lake=lake)


def test_torch_distributor_runs_the_same_function_on_two_processes(spark, scored_lake):
    root, lake, _ = scored_lake
    cfg = job(root, lake, "ddp", steps=4, checkpoint_every=0).model_copy(
        update={"distributed": DistributedConfig(num_processes=2, local_mode=True, use_gpu=False)})
    summary = run_train(spark, cfg, out=QUIET)
    assert summary["steps"] == 4 and len(summary["losses"]) == 4
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(summary["run_id"], "loss")] == [1, 2, 3, 4]
    # global batch = 2 processes x 4 samples
    assert all(m.value == 8 for m in client.get_metric_history(summary["run_id"], "samples"))


def test_rerunning_a_finished_train_job_does_nothing(spark, scored_lake):
    root, lake, _ = scored_lake
    first = run_train(spark, job(root, lake, "run3", steps=2, checkpoint_every=0), out=QUIET)
    lines = []
    again = run_train(spark, job(root, lake, "run3", steps=2, checkpoint_every=0), out=lines.append)
    assert again["run_id"] == first["run_id"] and "already holds the finished run" in lines[0]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(first["run_id"], "loss")] == [1, 2]


def test_distributed_training_refuses_dynamic_allocation_before_it_starts():
    from vig_udf.spark.train_job import DistributedConfig, check_distributed

    class Conf:
        def __init__(self, values):
            self.values = values

        def get(self, key, default=None):
            return self.values.get(key, default)

    class Session:
        def __init__(self, values):
            self.conf = Conf(values)

    with pytest.raises(ValueError, match="barrier stage.*dynamic allocation"):
        check_distributed(Session({"spark.dynamicAllocation.enabled": "true"}), DistributedConfig(num_processes=2))
    check_distributed(Session({"spark.dynamicAllocation.enabled": "false"}), DistributedConfig(num_processes=2))
    check_distributed(Session({"spark.dynamicAllocation.enabled": "true"}),  # the driver's node: no barrier stage
                      DistributedConfig(num_processes=2, local_mode=True))


def test_a_token_weighted_selection_trains_with_its_stored_weights_in_the_loss(spark, scored_lake, tmp_path,
                                                                                monkeypatch):
    """select with token_weight=vig, then the train job: every labelled answer token's loss weight is the one the
    selection stored (end-of-turn tokens weigh 1), while the hard mask's run weighs every label 1. (In a copy of
    the lake: the module's one vig selection stays the only one.)"""
    import shutil

    import numpy as np
    from pyspark.sql import functions as F

    import vig_udf.train.trainer as trainer
    from vig_udf.lake import read_table

    root, lake, select = scored_lake
    copy = tmp_path / "lake"
    shutil.copytree(lake, copy)
    weighted = run_select(spark, SelectJobConfig(lake=str(copy), policies=["vig"], p=50, token_weight="vig",
                                                 token_weight_max=2.0), out=QUIET)["policies"]["vig"]
    hard = select["policies"]["vig"]
    assert weighted["selection_id"] != hard["selection_id"] and weighted["kept_multimodal"] == hard["kept_multimodal"]
    stored = read_table(spark, str(copy / "selection")).where(
        (F.col("selection_id") == weighted["selection_id"]) & F.col("kept")).collect()
    off_one = lambda values: tuple(sorted(round(float(v), 5) for v in values if abs(v - 1.0) > 1e-6))  # noqa: E731
    signatures = {off_one(np.asarray(r.token_weight)[np.asarray(r.token_keep, dtype=bool)]) for r in stored}
    assert any(signatures)  # the stored weights are not all 1

    seen: dict[str, list] = {"hard": [], "weighted": []}
    run_of = {"name": None}
    original = trainer.selected_token_loss

    def recording(model, head, inputs, labels, weights=None):
        seen[run_of["name"]].append((labels.detach().clone(), None if weights is None else weights.detach().clone()))
        return original(model, head, inputs, labels, weights)

    monkeypatch.setattr(trainer, "selected_token_loss", recording)
    for name, selection_id in (("hard", hard["selection_id"]), ("weighted", weighted["selection_id"])):
        run_of["name"] = name
        cfg = job(tmp_path, str(copy), name, steps=2, checkpoint_every=0, learning_rate=1e-3,
                  image_root=str(root / "images")).model_copy(update={"policy": None, "selection_id": selection_id})
        assert run_train(spark, cfg, out=QUIET)["steps"] == 2
    for name, batches in seen.items():
        assert batches, name
        for labels, weights in batches:
            assert weights is not None  # every batch carries its label weights
            labelled = labels != -100
            assert (weights[~labelled] == 0).all()
            for row in range(labels.shape[0]):
                row_weights = weights[row][labelled[row]].tolist()
                if name == "hard":
                    assert row_weights == [1.0] * len(row_weights)
                elif row_weights:
                    assert off_one(row_weights) in signatures, row_weights
    assert any(off_one(w[lab != -100].tolist()) for lab, w in seen["weighted"])  # weights other than 1 reached the loss
