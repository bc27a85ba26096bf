"""How the score job sizes its tasks and the scorer's preparation threads (pure functions, no Spark)."""

from __future__ import annotations

from vig_udf.spark.score_job import ScoreJobConfig, default_prep_workers, resolve_spec, task_partitions, task_slots


def test_tasks_are_cut_from_rows_per_task_in_every_chunk_with_every_slot_busy():
    assert task_partitions(100_000, 2_000, 8) == 50  # a 100K-row chunk on 8 GPUs: 50 tasks of 2,000 rows
    assert task_partitions(100_000, 2_000, 64) == 64  # 64 GPUs: one task each at least (1,563 rows)
    assert task_partitions(120, 2_000, 2) == 2 and task_partitions(1, 2_000, 8) == 1 and task_partitions(0, 2_000, 8) == 1


def test_a_slot_is_a_task_of_spark_task_cpus_cores():
    assert task_slots(64, 8) == 8  # 8 executors of 8 cores, spark.task.cpus 8: 8 tasks (GPUs) at once, not 64
    assert task_slots(2, 1) == 2 and task_slots(2, 4) == 1 and task_slots(0, 1) == 1
    assert task_partitions(100_000, 2_000, task_slots(64, 8)) == 50  # not 64 tasks of 1,563 rows


def test_preparation_threads_are_the_tasks_cpus_but_one():
    assert default_prep_workers(8) == 7 and default_prep_workers(2) == 1
    assert default_prep_workers(1) == 1 and default_prep_workers(0) == 1  # at least one


def test_the_job_sets_prep_workers_from_the_task_unless_the_config_does(tiny_checkpoints):
    path = tiny_checkpoints["llava"]
    assert resolve_spec(ScoreJobConfig(scorer={"model_path": path}), gpu=False, task_cpus=8).kwargs["prep_workers"] == 7
    assert resolve_spec(ScoreJobConfig(scorer={"model_path": path}), gpu=False).kwargs["prep_workers"] == 1
    chosen = ScoreJobConfig(scorer={"model_path": path, "prep_workers": 0})
    assert resolve_spec(chosen, gpu=False, task_cpus=8).kwargs["prep_workers"] == 0
