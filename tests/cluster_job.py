"""Runs the score job on a ``local-cluster[2,1,1024]`` Spark (two executor JVMs) in its own process.

Used by tests/test_spark_cluster.py: the test session keeps its one local Spark session, and this
script gets a real multi-executor cluster with Spark's task retries. Usage:
    python tests/cluster_job.py <model> <image_root> <lake_for_counting> <lake_for_fault> <fault_marker>
Prints one JSON line with both job summaries.
"""

import json
import os
import sys

from vig_udf.config import ScorerConfig, SparkConfig
from vig_udf.spark.score_job import ScoreJobConfig, run_score
from vig_udf.spark.session import spark_session


def main(model: str, image_root: str, counting_lake: str, fault_lake: str, fault_marker: str) -> None:
    # short jobs: the driver and executor JVMs compile with C1 only and collect with the serial GC
    jvm = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
    spark = spark_session(SparkConfig(master="local-cluster[2,1,1024]", conf={
        "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", "spark.task.maxFailures": "4",
        "spark.executor.memory": "1g", "spark.sql.shuffle.partitions": "4",
        "spark.driver.extraJavaOptions": jvm, "spark.executor.extraJavaOptions": jvm}))
    spark.sparkContext.setLogLevel("ERROR")
    scorer = ScorerConfig(model_path=model, image_root=image_root, dtype="float32")
    quiet = lambda *_: None  # noqa: E731
    counting = run_score(spark, ScoreJobConfig(lake=counting_lake, scorer=scorer, partitions=6), out=quiet)
    os.environ.pop("VIG_LOAD_LOG_DIR", None)
    os.environ["VIG_FAULT_KILL_WORKER_ONCE"] = fault_marker
    fault = run_score(spark, ScoreJobConfig(lake=fault_lake, scorer=scorer, partitions=4), out=quiet)
    print(json.dumps({"counting": counting, "fault": fault}, default=str))
    spark.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
