"""A Spark driver, in its own process, whose one executor is started by the image's entrypoint as a Kubernetes
executor pod is: ``docker/entrypoint.sh executor`` with the environment Spark's Kubernetes scheduler sets.

Used by tests/test_container.py. The driver runs on ``local-cluster[0,1,512]``, Spark's standalone scheduler with
no worker of its own, so every task runs on the entrypoint's executor (Spark 4's KubernetesExecutorBackend).
Usage:
    python tests/k8s_executor_job.py <entrypoint> <folder with a tini> <executor log>
Prints one JSON line: the executors the driver registered and, per task, what its Python worker saw.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyspark
from pyspark import TaskContext
from pyspark.sql import SparkSession

POD = "vig-test-exec-7"
JVM = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]  # a short job: C1 only, the serial GC


def task(index: int):
    return {"index": index, "partition": TaskContext.get().partitionId(), "pod": os.environ.get("VIG_TEST_POD")}


def main(entrypoint: str, tini_folder: str, log_path: str) -> None:
    spark = (SparkSession.builder.master("local-cluster[0,1,512]").appName("vig-entrypoint-executor")
             .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.ui.enabled", "false").config("spark.executor.memory", "512m")
             .config("spark.driver.extraJavaOptions", " ".join(JVM)).getOrCreate())
    context = spark.sparkContext
    context.setLogLevel("ERROR")
    port = context.getConf().get("spark.driver.port")
    env = {**os.environ, "PATH": f"{tini_folder}{os.pathsep}{os.environ['PATH']}",
           "SPARK_HOME": str(Path(pyspark.__file__).parent),
           "SPARK_DRIVER_URL": f"spark://CoarseGrainedScheduler@127.0.0.1:{port}",
           "SPARK_EXECUTOR_ID": "7", "SPARK_EXECUTOR_CORES": "1", "SPARK_EXECUTOR_MEMORY": "512m",
           "SPARK_APPLICATION_ID": context.applicationId, "SPARK_EXECUTOR_POD_IP": "127.0.0.1",
           "SPARK_EXECUTOR_POD_NAME": POD, "SPARK_RESOURCE_PROFILE_ID": "0", "VIG_TEST_POD": POD,
           **{f"SPARK_JAVA_OPT_{i}": option for i, option in enumerate([f"-Dspark.driver.port={port}", *JVM])}}
    with open(log_path, "w") as log:
        executor = subprocess.Popen([entrypoint, "executor"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=Path(log_path).parent)
    try:
        deadline = time.monotonic() + 120
        while context._jsc.sc().getExecutorIds().size() == 0:
            if executor.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the executor did not register (exit code {executor.poll()}); see {log_path}")
            time.sleep(0.5)
        ids = context._jsc.sc().getExecutorIds()
        executors = [ids.apply(i) for i in range(ids.size())]
        tasks = context.parallelize(range(4), 4).map(task).collect()
        print(json.dumps({"executors": executors, "tasks": tasks}))
    finally:
        executor.terminate()
        executor.wait(60)
        spark.stop()


if __name__ == "__main__":
    main(*sys.argv[1:])
