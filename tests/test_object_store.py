"""The whole pipeline on a lake in object storage: ingest -> score -> select -> train -> export on an
``s3a://`` lake served by a local S3-compatible server (moto), reached by Spark's s3a connector over HTTP;
`vig sql` and `vig lake` on the same URI; and the tables read back by delta-rs straight from the bucket."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

from tests.s3_server import ACCESS_KEY, REGION, SECRET_KEY, s3a_conf
from tests.test_spark_jobs import scorer_config, write_corpus
from vig_udf.cli import app
from vig_udf.lake import read_table, table_history
from vig_udf.spark.export_job import ExportJobConfig, run_export
from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
from vig_udf.spark.score_job import ScoreJobConfig, run_score
from vig_udf.spark.select_job import SelectJobConfig, run_select
from vig_udf.spark.train_job import TrainJobConfig, run_train

pytestmark = [pytest.mark.spark, pytest.mark.slow]
QUIET = lambda *_: None  # noqa: E731


def test_pipeline_on_an_s3a_lake(spark, s3_lake, s3_endpoint, tmp_path, tiny_checkpoints):
    records = write_corpus(tmp_path, n=10, seed=41)
    bucket = s3_lake.removeprefix("s3a://").split("/")[0]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, region_name=REGION)
    s3.upload_file(str(tmp_path / "records.json"), bucket, "input/records.json")
    images = str(tmp_path / "images")  # images stay on a shared file system, as LLaVA's do

    ingest = run_ingest(spark, IngestJobConfig(input=f"s3a://{bucket}/input/records.json", image_root=images,
                                               lake=s3_lake), out=QUIET)
    again = run_ingest(spark, IngestJobConfig(input=f"s3a://{bucket}/input/records.json", image_root=images,
                                              lake=s3_lake), out=QUIET)
    scored = run_score(spark, ScoreJobConfig(lake=s3_lake, scorer=scorer_config(tiny_checkpoints["llava"], tmp_path),
                                             rows_per_commit=6), out=QUIET)
    selected = run_select(spark, SelectJobConfig(lake=s3_lake, policies=["vig"], p=50), out=QUIET)
    trained = run_train(spark, TrainJobConfig(
        lake=s3_lake, policy="vig", output_dir=str(tmp_path / "run"),
        training={"steps": 2, "batch_size": 4, "warmup_ratio": 0.0, "image_root": images},
        mlflow={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "s3", "log_model": False,
                "artifact_location": str(tmp_path / "artifacts"), "system_metrics": False}), out=QUIET)
    exported = run_export(spark, ExportJobConfig(lake=s3_lake, policy="vig", output=str(tmp_path / "out" / "vig.json")),
                          out=QUIET)

    assert ingest["new_rows"] == len(records) and again["already_ingested_in"] == ingest["corpus_version"]
    assert scored["rows_for_scorer"] == len(records)
    kept = selected["policies"]["vig"]["kept_multimodal"] + selected["policies"]["vig"]["kept_text_only"]
    assert trained["rows"] == kept and trained["paths"]["selection"] == f"{s3_lake}/selection"
    assert trained["steps"] == 2
    assert exported["records"] == len(json.loads(Path(exported["output"]).read_text())) == kept
    # the tables are objects in the bucket (Delta logs and data files), and nothing is left staged
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in
            page.get("Contents", [])]
    for table in ("corpus", "scores", "selection"):
        assert any(k.startswith(f"lake/{table}/_delta_log/") for k in keys)
        assert any(k.startswith(f"lake/{table}/") and k.endswith(".parquet") for k in keys)
    assert not [k for k in keys if k.startswith("lake/_staging/") and k.endswith(".parquet")]
    scores = read_table(spark, f"{s3_lake}/scores").select("sample_id", "scorer_id", "vig").collect()
    assert len({(r.sample_id, r.scorer_id) for r in scores}) == len(scores) == len(records)
    assert len(table_history(spark, f"{s3_lake}/scores")) == 2  # two chunks, two commits

    # delta-rs reads the same rows from the bucket
    options = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
               "AWS_REGION": REGION, "AWS_ALLOW_HTTP": "true"}
    via_delta_rs = DeltaTable(f"s3://{bucket}/lake/scores", storage_options=options).to_pyarrow_table()
    assert sorted(zip(via_delta_rs["sample_id"].to_pylist(), via_delta_rs["vig"].to_pylist()),
                  key=lambda r: r[0]) == sorted(((r.sample_id, r.vig) for r in scores), key=lambda r: r[0])

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
        assert result.exit_code == 0 and result.output.count("MERGE") + result.output.count("WRITE") == 2, result.output
    assert printed["spark"] == printed["local"] == [{"n": len(records)}]
    result = runner.invoke(app, ["sql", "SHOW TABLES", f"lake={s3_lake}", "engine=local", "--format", "csv", *s3a])
    assert result.exit_code == 0 and result.stdout.split() == ["name", "corpus", "scores", "selection"], result.output
    result = runner.invoke(app, ["lake", "vacuum", f"lake={s3_lake}"])
    assert result.exit_code == 0 and "vacuumed corpus, scores, selection" in result.output, result.output
