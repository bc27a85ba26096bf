"""Runs the score job as a driver of its own against a Spark standalone cluster whose executors advertise GPUs.

Used by tests/test_spark_cluster.py: the test session keeps its one local Spark session, and this script is
an application of the cluster (tests/standalone.py), with Spark's task retries and an event log. Usage:
    python tests/cluster_job.py <master> <event_log_dir> <model> <image_root> <lake> <fault_marker>
The first scoring task to start kills its Python worker once (VIG_FAULT_KILL_WORKER_ONCE=<fault_marker>).
Prints the job summary as one JSON line.
"""

import json
import os
import sys

from vig_udf.config import ScorerConfig, SparkConfig
from vig_udf.spark.score_job import ScoreJobConfig, run_score
from vig_udf.spark.session import spark_session

DISCOVERY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "fake_gpus.sh")


def main(master: str, event_log: str, model: str, image_root: str, lake: str, fault_marker: str) -> None:
    # short jobs: the driver and executor JVMs compile with C1 only and collect with the serial GC
    jvm = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
    spark = spark_session(SparkConfig(master=master, conf={
        "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", "spark.task.maxFailures": "4",
        "spark.executor.memory": "1g", "spark.executor.cores": "4", "spark.sql.shuffle.partitions": "8",
        "spark.databricks.delta.snapshotPartitions": "2",
        # the GPU settings of conf/gpu-cluster.yaml: two GPUs per executor, none asked by the other stages' tasks
        "spark.executor.resource.gpu.amount": "2", "spark.executor.resource.gpu.discoveryScript": DISCOVERY,
        "spark.executor.resource.gpu.vendor": "nvidia.com",
        "spark.eventLog.enabled": "true", "spark.eventLog.dir": event_log, "spark.eventLog.compress": "false",
        "spark.driver.extraJavaOptions": jvm, "spark.executor.extraJavaOptions": jvm}))
    spark.sparkContext.setLogLevel("ERROR")
    scorer = ScorerConfig(model_path=model, image_root=image_root, dtype="float32")
    quiet = lambda *_: None  # noqa: E731
    os.environ["VIG_FAULT_KILL_WORKER_ONCE"] = fault_marker
    cfg = ScoreJobConfig(lake=lake, scorer=scorer, partitions=8, rows_per_commit=4, task_cpus=2, poll_s=0.5)
    print(json.dumps(run_score(spark, cfg, out=quiet), default=str))
    spark.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
