"""Concurrent jobs and killed drivers against one lake, each job in its own process with its own Spark,
as users run them: every key exactly once, every row present, the history says what happened, and after a
crash a rerun (in the test session) gives the table a clean run gives (VACUUM then leaves no file that no
version references)."""

from __future__ import annotations

import json
import os
import select
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
    with open(log, "w") as out:
        return subprocess.Popen(_command(args, script), stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT,
                                start_new_session=True)


def _env() -> dict[str, str]:
    return {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(ROOT)}


def _command(args: list[str], script: str | None) -> list[str]:
    return [sys.executable, script, *args] if script else [sys.executable, "-m", "vig_udf.cli", *args]


def finish(codes: list[int], logs: list[Path]) -> list[int]:
    """Each job exited 0 or failed with the clear concurrent-write message."""
    for code, log in zip(codes, logs):
        if code != 0:
            assert CLEAR_MESSAGE in log.read_text(), log.read_text()[-3000:]
    return codes


class JobProcesses:
    """Processes of their own (each its own Python and Spark JVM, tests/vig_jobs.py) that run ``vig``
    commands when told: :meth:`run_concurrently` starts one command in each of them at once and waits for
    all. Several phases of concurrent jobs so cost one process start each, not one per phase."""

    def __init__(self, n: int, log: Path):
        with open(log, "w") as out:  # what a process prints before its first command
            self.processes = [subprocess.Popen(_command([], str(ROOT / "tests" / "vig_jobs.py")), stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, stderr=out, env=_env(), cwd=ROOT, text=True,
                                               start_new_session=True) for _ in range(n)]

    def run_concurrently(self, commands: list[list[str]], logs: list[Path], timeout: float = 300) -> list[int]:
        """Give every process its command (all start at once), then wait; returns the exit statuses."""
        for process, command, log in zip(self.processes, commands, logs, strict=True):
            process.stdin.write(json.dumps([str(log), *command]) + "\n")
            process.stdin.flush()
        deadline = time.monotonic() + timeout
        codes = []
        for process, log in zip(self.processes, logs):
            ready, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"no job finished in {timeout} s: {log.read_text()[-3000:]}"
            line = process.stdout.readline()
            assert line, f"the job process died: {log.read_text()[-3000:]}"
            codes.append(int(line))
        return codes

    def close(self) -> None:
        for process in self.processes:
            process.stdin.close()
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="module")
def concurrent_jobs(spark, tmp_path_factory, tiny_checkpoints) -> dict:
    """Three job processes against one new lake: first three concurrent ingests (two of a.json, one of
    b.json, which shares 4 records with it), then, on the corpus they made, three concurrent score jobs
    (two of one scorer, one of another). Returns the lake, the records and each phase's exit statuses."""
    tmp_path = tmp_path_factory.mktemp("concurrent")
    records = write_corpus(tmp_path, n=12, seed=31)
    (tmp_path / "a.json").write_text(json.dumps(records[:8]))
    (tmp_path / "b.json").write_text(json.dumps(records[4:]))  # shares 4 records with a.json
    lake = tmp_path / "lake"
    scorers = [scorer_config(tiny_checkpoints["llava"], tmp_path)] * 2 + [
        scorer_config(tiny_checkpoints["llava"], tmp_path, counterfactual="drop")]
    confs = [write_conf(tmp_path, lake, ingest={"input": str(tmp_path / name), "image_root": str(tmp_path / "images")},
                        score={"scorer": scorer.model_dump(exclude_none=True), "partitions": 2})
             for name, scorer in zip(["a.json", "a.json", "b.json"], scorers)]
    jobs = JobProcesses(3, tmp_path / "processes.log")
    try:
        phases = {}
        for phase in ("ingest", "score"):
            logs = [tmp_path / f"{phase}-{i}.log" for i in range(3)]
            codes = jobs.run_concurrently([[phase, "--config", str(conf)] for conf in confs], logs)
            phases[phase] = finish(codes, logs)
    finally:
        jobs.close()
    return {"lake": lake, "records": records, **phases}


def test_concurrent_ingests_of_the_same_and_of_overlapping_inputs(spark, concurrent_jobs):
    lake, records, codes = concurrent_jobs["lake"], concurrent_jobs["records"], concurrent_jobs["ingest"]

    ids = [r.sample_id for r in read_table(spark, lake / "corpus").select("sample_id").collect()]
    assert sorted(ids) == sorted(r["id"] for r in records)  # every record once, from whichever run
    history = table_history(spark, lake / "corpus")
    assert history[-1]["operation"] == "WRITE" and history[-1]["job"] == "ingest"  # the run that created it
    assert {c["operation"] for c in history[:-1]} <= {"MERGE"}
    assert sum(c["metrics"].get("numTargetRowsInserted", c["metrics"].get("numOutputRows", 0)) for c in history) == 12
    # the two runs of a.json are one app transaction: at most one of them committed
    assert sum(1 for c in history if c["config"]["input"].endswith("a.json")) == 1
    assert codes.count(0) >= 2  # the run that created the table, and at least one that merged


def test_concurrent_scores_of_one_scorer_and_of_two(spark, concurrent_jobs):
    lake, records = concurrent_jobs["lake"], concurrent_jobs["records"]

    keys = [tuple(r) for r in read_table(spark, lake / "scores").select("sample_id", "scorer_id").collect()]
    assert len(keys) == len(set(keys)) == 2 * len(records)  # every sample once per scorer
    assert {k[0] for k in keys} == {r["id"] for r in records}
    history = table_history(spark, lake / "scores")
    added = sum(c["metrics"].get("numTargetRowsInserted", c["metrics"].get("numOutputRows", 0)) for c in history)
    assert added == 2 * len(records) and all(c["job"] == "score" for c in history)
    assert not list((lake / "_staging" / "scores").iterdir())  # every run cleared what it staged


FAULTS = ("during_commit", "between_commits", "after_last_commit")


def test_score_jobs_killed_while_scoring_and_committing_rerun_to_the_clean_result(spark, tmp_path, tiny_checkpoints):
    """Killed in a commit that overlaps scoring (tasks still scoring), between two commits and after the last
    commit: the table holds the commits made before the kill, and a rerun gives a clean run's rows; VACUUM then
    clears what the killed runs left staged."""
    write_corpus(tmp_path, n=8, seed=35)
    # one ingest, copied: the four lakes start from the same corpus (a Delta table's paths are relative)
    run_ingest(spark, IngestJobConfig(input=str(tmp_path / "records.json"), image_root=str(tmp_path / "images"),
                                      lake=str(tmp_path / "clean")), out=QUIET)
    for lake in FAULTS:
        shutil.copytree(tmp_path / "clean", tmp_path / lake)
    scorer = scorer_config(tiny_checkpoints["llava"], tmp_path)
    # one task at a time (local[1]), a commit per part: the first part commits while the second task scores
    job = {"scorer": scorer.model_dump(exclude_none=True), "rows_per_commit": 1, "partitions": 2, "poll_s": 0.2}
    run_score(spark, ScoreJobConfig(lake=str(tmp_path / "clean"), scorer=scorer), out=QUIET)

    def args(lake: str) -> list[str]:
        return ["score", "--config", str(write_conf(tmp_path, tmp_path / lake, score=job))]

    runs = [start([where, *args(where)], tmp_path / f"{where}.log", script=str(ROOT / "tests" / "lake_fault_job.py"))
            for where in FAULTS]
    for run, where in zip(runs, FAULTS):
        assert run.wait(timeout=300) == -signal.SIGKILL, (tmp_path / f"{where}.log").read_text()[-3000:]
    clean = {r.sample_id: r for r in read_table(spark, tmp_path / "clean" / "scores").collect()}
    for lake in FAULTS:
        scores = tmp_path / lake / "scores"
        made = len(table_history(spark, scores)) if (scores / "_delta_log").exists() else 0
        rerun = run_score(spark, ScoreJobConfig(lake=str(tmp_path / lake), scorer=scorer, rows_per_commit=1,
                                                partitions=2), out=QUIET)
        if lake == "during_commit":
            assert made == 0  # killed in the first commit: nothing committed
        elif lake == "between_commits":
            assert made == 1 and 0 < rerun["scored"] < len(clean)  # the first part's rows stayed, the rest rescored
        else:
            assert made >= 1 and rerun["scored"] == 0  # after the last commit: every row was committed
        final = read_table(spark, scores).collect()
        assert sorted(r.sample_id for r in final) == sorted(clean), lake  # every sample once
        for row in final:
            assert row.status == clean[row.sample_id].status and row.scorer_id == clean[row.sample_id].scorer_id
            if row.status == "ok":
                np.testing.assert_allclose(row.token_vig, clean[row.sample_id].token_vig, atol=1e-5)
        staging = tmp_path / lake / "_staging" / "scores"
        assert list(staging.iterdir())  # the killed run left its scored parts behind ...
        vacuum_lake(spark, tmp_path / lake, retain_hours=0, retention_check=False)
        assert not list(staging.iterdir())  # ... which VACUUM clears
        on_disk = {p.name for p in scores.rglob("*.parquet")}
        assert on_disk == {os.path.basename(f) for f in read_table(spark, scores).inputFiles()}
    shutil.rmtree(tmp_path / "clean")
