"""The whole pipeline with nothing on local disk but caches: the input, the images, the lake, the training run
(training set, checkpoints, model, MLflow artifacts) and the export all in one bucket of a local S3-compatible
server (moto), which Spark reaches through its s3a connector and Python through the storage layer, over HTTP;
`vig sql` and `vig lake` on the same URI; and the tables read back by delta-rs straight from the bucket."""

from __future__ import annotations

import json

import boto3
import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY, s3a_conf
from tests.test_spark_jobs import write_corpus
from tests.test_train_loss import Interrupt, interrupt_at
from vig_udf.cli import app
from vig_udf.config import ScorerConfig
from vig_udf.lake import read_table, table_history
from vig_udf.spark.export_job import ExportJobConfig, run_export
from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
from vig_udf.spark.score_job import ScoreJobConfig, run_score
from vig_udf.spark.select_job import SelectJobConfig, run_select
from vig_udf.spark.train_job import TrainJobConfig, run_train
from vig_udf.storage import Storage

pytestmark = [pytest.mark.spark, pytest.mark.slow]
QUIET = lambda *_: None  # noqa: E731


def test_the_pipeline_with_everything_in_a_bucket(spark, s3_lake, s3_endpoint, tmp_path, tiny_checkpoints,
                                                   monkeypatch):
    local = tmp_path / "made-here"  # what the test writes itself before uploading it
    records = write_corpus(local, n=10, seed=41)
    bucket = s3_lake.removeprefix("s3a://").split("/")[0]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, region_name=REGION)
    storage = Storage.from_conf(s3a_conf(s3_endpoint))
    storage.upload(str(local), f"s3a://{bucket}/input")
    storage.upload(tiny_checkpoints["llava"], f"s3a://{bucket}/models/llava")
    images, model = f"s3a://{bucket}/input/images", f"s3a://{bucket}/models/llava"
    cache = tmp_path / "cache"
    monkeypatch.setenv("VIG_CACHE_DIR", str(cache))
    # MLflow's artifact store on the same bucket (boto3 reads these)
    for name, value in (("MLFLOW_S3_ENDPOINT_URL", s3_endpoint), ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
                        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY), ("AWS_DEFAULT_REGION", REGION)):
        monkeypatch.setenv(name, value)

    ingest = IngestJobConfig(input=f"s3a://{bucket}/input/records.json", image_root=images, lake=s3_lake,
                             spark={"conf": s3a_conf(s3_endpoint)})  # recorded in the commit, secrets redacted
    first = run_ingest(spark, ingest, out=QUIET)
    again = run_ingest(spark, ingest, out=QUIET)
    scorer = ScorerConfig(model_path=model, image_root=images, dtype="float32")
    scored = run_score(spark, ScoreJobConfig(lake=s3_lake, scorer=scorer, rows_per_commit=6), out=QUIET)
    selected = run_select(spark, SelectJobConfig(lake=s3_lake, policies=["vig"], p=50), out=QUIET)
    run_dir = f"s3a://{bucket}/runs/vig"
    train = TrainJobConfig(
        lake=s3_lake, policy="vig", output_dir=run_dir,
        training={"steps": 2, "batch_size": 4, "warmup_ratio": 0.0, "image_root": images, "checkpoint_every": 1},
        mlflow={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "s3",
                "artifact_location": f"s3://{bucket}/mlflow", "system_metrics": False})
    with pytest.raises(Interrupt):  # killed after step 1's checkpoint
        run_train(spark, train, out=QUIET, on_step=interrupt_at(2))
    assert storage.is_file(f"{run_dir}/checkpoints/checkpoint-1/.vig-complete")
    trained = run_train(spark, train, out=QUIET)  # resumes from the checkpoint in the bucket
    exported = run_export(spark, ExportJobConfig(lake=s3_lake, policy="vig", output=f"s3a://{bucket}/export/vig.json"),
                          out=QUIET)

    assert first["new_rows"] == len(records) and again["already_ingested_in"] == first["corpus_version"]
    assert scored["rows_for_scorer"] == len(records)
    assert scored["rows_by_status"].get("ok", 0) == sum("image" in r for r in records)  # images read from S3
    kept = selected["policies"]["vig"]["kept_multimodal"] + selected["policies"]["vig"]["kept_text_only"]
    assert trained["rows"] == kept and trained["paths"]["selection"] == f"{s3_lake}/selection"
    assert trained["steps"] == 2 and trained["resumed_from_step"] == 1
    assert trained["model_dir"] == f"{run_dir}/model" and storage.is_file(f"{run_dir}/model/config.json")
    exported_records = json.loads(storage.read_text(exported["output"]))
    assert exported["output"] == f"s3a://{bucket}/export/vig.json" and len(exported_records) == kept
    assert json.loads(storage.read_text(f"s3a://{bucket}/export/vig.mask.json"))["totals"]["records"] == kept

    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in
            page.get("Contents", [])]
    for table in ("corpus", "scores", "selection"):
        assert any(k.startswith(f"lake/{table}/_delta_log/") for k in keys)
        assert any(k.startswith(f"lake/{table}/") and k.endswith(".parquet") for k in keys)
    assert not [k for k in keys if k.startswith("lake/_staging/") and k.endswith(".parquet")]
    assert any(k.startswith("runs/vig/train_set/") and k.endswith(".parquet") for k in keys)
    assert [k for k in keys if k.startswith("runs/vig/checkpoints/") and k.endswith(".vig-complete")] == [
        "runs/vig/checkpoints/checkpoint-1/.vig-complete"]  # keep_checkpoints=2: only step 1 was a checkpoint
    assert any(k.startswith("mlflow/") and k.endswith("model/config.json") for k in keys)  # logged by rank 0
    assert not [k for k in keys if k.endswith(".tmp")]
    # this machine holds caches only: the model's copy; the run's working copy is gone after the upload
    assert sorted(p.name for p in cache.iterdir()) == ["models", "runs"]
    assert not any((cache / "runs").iterdir())

    scores = read_table(spark, f"{s3_lake}/scores").select("sample_id", "scorer_id", "vig").collect()
    assert len({(r.sample_id, r.scorer_id) for r in scores}) == len(scores) == len(records)
    assert len(table_history(spark, f"{s3_lake}/scores")) == scored["commits"] >= 1  # the job's own count
    # delta-rs reads the same rows from the bucket
    options = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
               "AWS_REGION": REGION, "AWS_ALLOW_HTTP": "true"}
    via_delta_rs = DeltaTable(f"s3://{bucket}/lake/scores", storage_options=options).to_pyarrow_table()
    assert sorted(zip(via_delta_rs["sample_id"].to_pylist(), via_delta_rs["vig"].to_pylist()),
                  key=lambda r: r[0]) == sorted(((r.sample_id, r.vig) for r in scores), key=lambda r: r[0])
    # no credential reached the tables' history
    recorded = table_history(spark, f"{s3_lake}/corpus")[-1]["config"]["spark"]["conf"]
    assert recorded["spark.hadoop.fs.s3a.secret.key"] == recorded["spark.hadoop.fs.s3a.access.key"] == "<redacted>"
    assert recorded["spark.hadoop.fs.s3a.endpoint"] == s3_endpoint

    # the command line takes the same URI: Spark, and delta-rs with DuckDB from the same s3a settings
    runner = CliRunner()
    s3a = [f'spark.conf."{key}"={json.dumps(value)}' for key, value in s3a_conf(s3_endpoint).items()]
    printed = {}
    for engine in ("spark", "local"):
        result = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM scores JOIN corpus@v0 USING (sample_id)",
                                     f"lake={s3_lake}", f"engine={engine}", "--format", "json", *s3a])
        assert result.exit_code == 0, (engine, result.output)
        printed[engine] = json.loads(result.stdout)
        result = runner.invoke(app, ["lake", "history", "scores", f"lake={s3_lake}", f"engine={engine}", *s3a])
        assert result.exit_code == 0 and result.output.count("MERGE") + result.output.count("WRITE") == scored["commits"], result.output
    assert printed["spark"] == printed["local"] == [{"n": len(records)}]
    result = runner.invoke(app, ["sql", "SHOW TABLES", f"lake={s3_lake}", "engine=local", "--format", "csv", *s3a])
    assert result.exit_code == 0 and result.stdout.split() == ["name", "corpus", "scores", "selection"], result.output
    result = runner.invoke(app, ["lake", "vacuum", f"lake={s3_lake}"])
    assert result.exit_code == 0 and "vacuumed corpus, scores, selection" in result.output, result.output
