"""Concurrent jobs and killed drivers against one lake, each job in its own process with its own Spark,
as users run them: every key exactly once, every row present, the history says what happened, and after a
crash a rerun gives the table a clean run gives (VACUUM then leaves no file that no version references)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_spark_jobs import scorer_config, write_corpus
from vig_udf.lake import read_table, table_history, vacuum_lake
from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
from vig_udf.spark.score_job import ScoreJobConfig, run_score

pytestmark = [pytest.mark.spark, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
QUIET = lambda *_: None  # noqa: E731
CLEAR_MESSAGE = "conflicted with a concurrent commit"


def write_conf(folder: Path, lake: Path, **sections) -> Path:
    """A job config for processes of their own: one local core each, a small driver, and a JVM that only
    compiles with C1 (these jobs are short: measured about 15% faster end to end)."""
    conf = {"lake": str(lake), "spark": {"master": "local[1]", "conf": {
        "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", "spark.sql.shuffle.partitions": "2",
        "spark.driver.memory": "1g", "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"}},
        **sections}
    path = folder / f"conf-{len(list(folder.glob('conf-*.json')))}.json"
    path.write_text(json.dumps(conf))  # YAML is a superset of JSON
    return path


def start(args: list[str], log: Path, *, script: str | None = None) -> subprocess.Popen:
    """Start ``vig <args>`` (or ``script <args>``) in a new process group; output goes to ``log``."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, script, *args] if script else [sys.executable, "-m", "vig_udf.cli", *args]
    with open(log, "w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)


def finish(processes: list[subprocess.Popen], logs: list[Path], timeout: float = 300) -> list[int]:
    """Wait for every process; each exits 0 or fails with the clear concurrent-write message."""
    codes = [p.wait(timeout=timeout) for p in processes]
    for code, log in zip(codes, logs):
        if code != 0:
            assert CLEAR_MESSAGE in log.read_text(), log.read_text()[-3000:]
    return codes


def test_concurrent_ingests_of_the_same_and_of_overlapping_inputs(spark, tmp_path):
    records = write_corpus(tmp_path, n=12, seed=31)
    (tmp_path / "a.json").write_text(json.dumps(records[:8]))
    (tmp_path / "b.json").write_text(json.dumps(records[4:]))  # shares 4 records with a.json
    lake = tmp_path / "lake"
    logs, processes = [], []
    for i, name in enumerate(["a.json", "a.json", "b.json"]):
        conf = write_conf(tmp_path, lake, ingest={"input": str(tmp_path / name), "image_root": str(tmp_path / "images")})
        logs.append(tmp_path / f"ingest-{i}.log")
        processes.append(start(["ingest", "--config", str(conf)], logs[-1]))

    codes = finish(processes, logs)

    ids = [r.sample_id for r in read_table(spark, lake / "corpus").select("sample_id").collect()]
    assert sorted(ids) == sorted(r["id"] for r in records)  # every record once, from whichever run
    history = table_history(spark, lake / "corpus")
    assert history[-1]["operation"] == "WRITE" and history[-1]["job"] == "ingest"  # the run that created it
    assert {c["operation"] for c in history[:-1]} <= {"MERGE"}
    assert sum(c["metrics"].get("numTargetRowsInserted", c["metrics"].get("numOutputRows", 0)) for c in history) == 12
    # the two runs of a.json are one app transaction: at most one of them committed
    assert sum(1 for c in history if c["config"]["input"].endswith("a.json")) == 1
    assert codes.count(0) >= 2  # the run that created the table, and at least one that merged


def test_concurrent_scores_of_one_scorer_and_of_two(spark, tmp_path, tiny_checkpoints):
    records = write_corpus(tmp_path, n=6, seed=33)
    lake = tmp_path / "lake"
    run_ingest(spark, IngestJobConfig(input=str(tmp_path / "records.json"), image_root=str(tmp_path / "images"),
                                      lake=str(lake)), out=QUIET)
    scorers = [scorer_config(tiny_checkpoints["llava"], tmp_path)] * 2 + [
        scorer_config(tiny_checkpoints["llava"], tmp_path, counterfactual="drop")]
    logs, processes = [], []
    for i, scorer in enumerate(scorers):
        conf = write_conf(tmp_path, lake, score={"scorer": scorer.model_dump(exclude_none=True), "partitions": 2})
        logs.append(tmp_path / f"score-{i}.log")
        processes.append(start(["score", "--config", str(conf)], logs[-1]))

    finish(processes, logs)

    keys = [tuple(r) for r in read_table(spark, lake / "scores").select("sample_id", "scorer_id").collect()]
    assert len(keys) == len(set(keys)) == 2 * len(records)  # every sample once per scorer
    assert {k[0] for k in keys} == {r["id"] for r in records}
    history = table_history(spark, lake / "scores")
    added = sum(c["metrics"].get("numTargetRowsInserted", c["metrics"].get("numOutputRows", 0)) for c in history)
    assert added == 2 * len(records) and all(c["job"] == "score" for c in history)
    assert not list((lake / "_staging" / "scores").iterdir())  # every run cleared what it staged


def _kill_when_staging_has_files(process: subprocess.Popen, staging: Path, timeout: float = 300) -> None:
    """SIGKILL the job's process group once its tasks have written staged files (a crash mid-write)."""
    deadline = time.monotonic() + timeout
    while not list(staging.glob("*/*.parquet")):
        assert process.poll() is None, "the job ended before it wrote anything"
        assert time.monotonic() < deadline, "no staged file appeared"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def test_killed_score_jobs_rerun_to_the_clean_result_and_vacuum_leaves_no_stray_file(spark, tmp_path,
                                                                                         tiny_checkpoints):
    write_corpus(tmp_path, n=8, seed=35)
    for lake in ("clean", "crashed"):
        run_ingest(spark, IngestJobConfig(input=str(tmp_path / "records.json"), image_root=str(tmp_path / "images"),
                                          lake=str(tmp_path / lake)), out=QUIET)
    scorer = scorer_config(tiny_checkpoints["llava"], tmp_path)
    run_score(spark, ScoreJobConfig(lake=str(tmp_path / "clean"), scorer=scorer), out=QUIET)
    lake = tmp_path / "crashed"
    conf = write_conf(tmp_path, lake, score={"scorer": scorer.model_dump(exclude_none=True), "rows_per_commit": 4,
                                             "partitions": 2})
    args = ["score", "--config", str(conf)]
    staging = lake / "_staging" / "scores"

    _kill_when_staging_has_files(start(args, tmp_path / "run1.log"), staging)  # killed while writing
    for i, where in enumerate(["before_merge", "after_commit"], start=2):
        run = start([where, *args], tmp_path / f"run{i}.log", script=str(ROOT / "tests" / "lake_fault_job.py"))
        assert run.wait(timeout=300) == -signal.SIGKILL, (tmp_path / f"run{i}.log").read_text()[-3000:]
    crashed_versions = len(table_history(spark, lake / "scores"))
    assert crashed_versions == 1  # only the commit of the run killed after it
    assert start(args, tmp_path / "run4.log").wait(timeout=300) == 0, (tmp_path / "run4.log").read_text()[-3000:]

    clean = {r.sample_id: r for r in read_table(spark, tmp_path / "clean" / "scores").collect()}
    final = read_table(spark, lake / "scores").collect()
    assert sorted(r.sample_id for r in final) == sorted(clean)  # every sample once
    for row in final:
        assert row.status == clean[row.sample_id].status and row.scorer_id == clean[row.sample_id].scorer_id
        if row.status == "ok":
            np.testing.assert_allclose(row.token_vig, clean[row.sample_id].token_vig, atol=1e-5)
    assert list(staging.iterdir())  # the killed runs left staged rows behind ...
    table = lake / "scores"
    vacuum_lake(spark, lake, retain_hours=0, retention_check=False)
    assert not list(staging.iterdir())  # ... which VACUUM clears
    on_disk = {p.name for p in table.rglob("*.parquet")}
    assert on_disk == {os.path.basename(f) for f in read_table(spark, table).inputFiles()}
    shutil.rmtree(tmp_path / "clean")
