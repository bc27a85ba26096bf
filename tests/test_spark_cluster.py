"""The score job on a two-executor local cluster: exactly-once rows, one model load per Python worker,
and recovery from a Python worker killed in the middle of a scoring task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.test_spark_jobs import assert_no_orphan_files, score_rows, write_corpus
from vig_udf import VIGScorer
from vig_udf.lake import read_table
from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest

pytestmark = [pytest.mark.spark, pytest.mark.slow]
REPO = Path(__file__).parent.parent


def test_local_cluster_scores_once_loads_once_per_worker_and_survives_a_killed_worker(
        spark, tmp_path, tiny_checkpoints):
    records = write_corpus(tmp_path, n=16, seed=9)
    for lake in ("counting", "fault"):
        run_ingest(spark, IngestJobConfig(input=str(tmp_path / "records.json"), image_root=str(tmp_path / "images"),
                                          lake=str(tmp_path / lake)), out=lambda *_: None)
    loads, marker = tmp_path / "loads", tmp_path / "killed-once"
    env = dict(os.environ, VIG_LOAD_LOG_DIR=str(loads), PYTHONPATH=str(REPO), PYSPARK_PYTHON=sys.executable)
    env.pop("VIG_FAULT_KILL_WORKER_ONCE", None)
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "cluster_job.py"), tiny_checkpoints["llava"], str(tmp_path / "images"),
         str(tmp_path / "counting"), str(tmp_path / "fault"), str(marker)],
        env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = json.loads(done.stdout.strip().splitlines()[-1])

    # every sample exactly once, and the same scores as the single-process scorer
    counting = score_rows(spark, tmp_path / "counting")
    assert read_table(spark, str(tmp_path / "counting" / "scores")).count() == len(records) == len(counting)
    local = VIGScorer.from_pretrained(tiny_checkpoints["llava"], image_root=str(tmp_path / "images"))
    for result in local.score(records):
        assert counting[result.sample_id]["status"] == result.status
        if result.status == "ok":
            np.testing.assert_allclose(counting[result.sample_id]["token_vig"], result.token_vig, atol=1e-5)

    # the model was loaded once per Python worker that scored, counted from the workers' own markers
    loads_per_worker = Counter(p.name.split("-")[0] for p in loads.iterdir())
    assert loads_per_worker and set(loads_per_worker.values()) == {1}
    assert len(loads_per_worker) <= 6  # at most one worker per task, far fewer with worker reuse

    # a worker was killed mid-task, Spark retried, and the table holds exactly one row per sample
    assert marker.exists()
    assert summaries["fault"]["rows_for_scorer"] == len(records)
    fault = read_table(spark, str(tmp_path / "fault" / "scores"))
    assert fault.count() == fault.select("sample_id").distinct().count() == len(records)
    assert_no_orphan_files(spark, tmp_path / "fault" / "scores")
