"""What a job asks of the cluster behind its session, the same way on a classic session and on Spark Connect
(where there is no SparkContext): the master, the default parallelism, the resources of executors, and a
small function run on an executor.
"""

from __future__ import annotations

import json

from vig_udf.lake.session_conf import is_connect


class NeedsClassicSession(RuntimeError):
    """The job needs a classic Spark session (a SparkContext), which Spark Connect does not have."""


def master_of(spark) -> str | None:
    """The session's master URL (``local[2]``, ``spark://...``, ``yarn``, ``k8s://...``), None if unknown."""
    if not is_connect(spark):
        return spark.sparkContext.master
    return spark.conf.get("spark.master", None)


def is_local_master(master: str | None) -> bool:
    """Whether a master runs the executors in the driver's process (so the driver sees what they see)."""
    return bool(master) and master.startswith("local") and not master.startswith("local-cluster")


def default_parallelism(spark) -> int:
    """How many tasks the cluster runs at once by default (its cores): ``sparkContext.defaultParallelism`` on a
    classic session; on Spark Connect, ``spark.default.parallelism`` or the partitions Spark gives a range."""
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    configured = spark.conf.get("spark.default.parallelism", None)
    if configured:
        return int(configured)
    from pyspark.sql import functions as F

    # spark.range without numPartitions is cut into the cluster's default parallelism
    return spark.range(0, 1 << 20).select(F.spark_partition_id().alias("p")).distinct().count()


def executor_gpus(spark) -> float:
    """GPUs per executor the session was configured with (``spark.executor.resource.gpu.amount``), 0 if none."""
    return float(spark.conf.get("spark.executor.resource.gpu.amount", "0") or 0)


def run_on_executor(spark, function, argument: str) -> dict:
    """``function(argument)`` (a JSON-serialisable dict result) computed in one task on an executor.

    For checks that must see what executors see (a folder mounted on the workers, not on the driver)."""
    import pyarrow as pa

    def task(batches):
        for batch in batches:
            for value in batch.column(0).to_pylist():
                yield pa.RecordBatch.from_pylist([{"result": json.dumps(function(value))}])

    row = spark.createDataFrame([(argument,)], "argument STRING").repartition(1).mapInArrow(
        task, "result STRING").first()
    return json.loads(row["result"])


def require_classic(spark, what: str) -> None:
    """Refuse, with one message, what a Spark Connect session cannot do."""
    if is_connect(spark):
        raise NeedsClassicSession(f"{what} needs a classic Spark session, and this one is Spark Connect (Databricks "
                                  "standard or serverless, or SPARK_REMOTE / spark.remote is set): run it on a "
                                  "dedicated (single-user) or job cluster, or without SPARK_REMOTE")
