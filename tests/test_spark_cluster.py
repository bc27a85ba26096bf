"""The score job on a real Spark standalone cluster (a master and two workers on 127.0.0.1, each advertising two
GPUs through a discovery script; the scorer runs on the CPU): stage-level scheduling gives the scoring stage one
GPU and two CPUs per task while the other stages run a task per core; every row exactly once; one model load
per Python worker, never two scorers in one worker; and recovery from a Python worker killed mid-task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from tests.standalone import OVERLAP_MS, stages_from_event_log, standalone_cluster
from tests.test_spark_jobs import assert_no_orphan_files, score_rows, write_corpus
from vig_udf import VIGScorer
from vig_udf.lake import read_table
from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest

pytestmark = [pytest.mark.spark, pytest.mark.slow]
REPO = Path(__file__).parent.parent


def test_a_standalone_cluster_with_gpus_schedules_the_scoring_stage_apart_and_scores_once(spark, tmp_path,
                                                                                         tiny_checkpoints):
    records = write_corpus(tmp_path, n=16, seed=9)
    lake = tmp_path / "lake"
    run_ingest(spark, IngestJobConfig(input=str(tmp_path / "records.json"), image_root=str(tmp_path / "images"),
                                      lake=str(lake)), out=lambda *_: None)
    loads, marker, events = tmp_path / "loads", tmp_path / "killed-once", tmp_path / "events"
    events.mkdir()
    env = dict(os.environ, VIG_LOAD_LOG_DIR=str(loads), PYTHONPATH=str(REPO), PYSPARK_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1")
    env.pop("VIG_FAULT_KILL_WORKER_ONCE", None)
    with standalone_cluster(tmp_path / "cluster") as master:
        done = subprocess.run(
            [sys.executable, str(REPO / "tests" / "cluster_job.py"), master, f"file:{events}",
             tiny_checkpoints["llava"], str(tmp_path / "images"), str(lake), str(marker)],
            env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    counting = json.loads(done.stdout.strip().splitlines()[-1])

    # a worker was killed mid-task and Spark retried it; every sample exactly once, and the same scores as the
    # single-process scorer
    assert marker.exists()
    rows = score_rows(spark, lake)
    table = read_table(spark, str(lake / "scores"))
    assert table.count() == table.select("sample_id").distinct().count() == len(records) == len(rows)
    assert_no_orphan_files(spark, lake / "scores")
    local = VIGScorer.from_pretrained(tiny_checkpoints["llava"], image_root=str(tmp_path / "images"))
    for result in local.score(records):
        assert rows[result.sample_id]["status"] == result.status
        if result.status == "ok":
            np.testing.assert_allclose(rows[result.sample_id]["token_vig"], result.token_vig, atol=1e-5)
    assert counting["commits"] >= 2  # committed while later tasks scored

    # the scoring stage got a GPU and two CPUs per task, so at most two of its tasks ran at once on an executor,
    # on different GPUs; the other stages ran with the defaults (a CPU and no GPU each: a task per core)
    stages = stages_from_event_log(events).values()
    scoring = [s for s in stages if s["profile"].get("gpu") == 1.0]
    assert len(scoring) == 1 and scoring[0]["profile"]["cpus"] == 2
    assert all(s["most_at_once"] <= 2 for s in scoring)
    others = [s for s in stages if "cpus" in s["profile"] and "gpu" not in s["profile"]]
    assert others and all(s["profile"]["cpus"] == 1 for s in others)
    assert max(s["most_at_once"] for s in others) > 2  # more tasks at once than the scoring stage may
    tasks = {(t["partition"], t["attempt"]): t for t in counting["task_records"]}
    by_executor = defaultdict(list)
    for executor, start, end, index, attempt in scoring[0]["tasks"]:
        by_executor[executor].append((start, end, tasks[(index, attempt)]["gpu"]))
    assert {t["gpu"] for t in tasks.values()} <= {"0", "1"} and len(by_executor) == 2  # both executors scored
    for runs in by_executor.values():  # two tasks running at once on one executor hold different GPUs
        for a in runs:
            for b in runs:
                if a is not b and a[0] < b[1] - OVERLAP_MS and b[0] < a[1] - OVERLAP_MS:
                    assert a[2] != b[2], runs

    # the model was loaded once per Python worker, counted from the workers' own markers and from the job's task
    # records (which the killed worker's task never returned); no worker ever released one scorer for another
    loads_per_worker = Counter(p.name.split("-")[0] for p in loads.iterdir())
    assert loads_per_worker and set(loads_per_worker.values()) == {1}
    assert counting["model_loads"] == counting["workers"] == len(loads_per_worker) - 1
    assert not any(t["released"] for t in counting["task_records"])
