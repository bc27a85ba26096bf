"""Spark fixtures: ONE local SparkSession with Delta Lake for the whole test session (starting Spark takes
seconds), built by the product's own ``spark_session``, and a local S3-compatible server that the session's
s3a connector reaches over HTTP.

Tests that use them are marked ``@pytest.mark.spark`` (deselect with ``-m "not spark"``). Without Java
the fixture skips them with the reason.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys

import pytest

from tests.s3_server import create_bucket, s3_server, s3a_conf

_buckets = itertools.count()


def _java_available() -> bool:
    java_home = os.environ.get("JAVA_HOME")
    return bool(shutil.which("java") or (java_home and os.path.exists(os.path.join(java_home, "bin", "java"))))


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """The endpoint URL of a moto S3 server on 127.0.0.1, for the whole test session."""
    with s3_server(tmp_path_factory.mktemp("s3") / "server.log") as endpoint:
        yield endpoint


@pytest.fixture
def s3_lake(s3_endpoint) -> str:
    """A lake root on a fresh bucket of the test S3 server: ``s3a://<bucket>/lake``."""
    bucket = f"vig-test-{next(_buckets)}"
    create_bucket(s3_endpoint, bucket)
    return f"s3a://{bucket}/lake"


@pytest.fixture(scope="session")
def spark(tmp_path_factory, s3_endpoint):
    """A ``local[2]`` SparkSession with Delta Lake and s3a: no UI, 4 shuffle partitions, Arrow on, UTC.

    Python workers run this interpreter (``PYSPARK_PYTHON=sys.executable``), so they see the same
    packages as the tests.
    """
    if not _java_available():
        pytest.skip("Spark tests need Java 17+ (install a JDK or set JAVA_HOME)")
    from vig_udf.config import SparkConfig
    from vig_udf.spark.session import hadoop_aws_package, spark_session

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    base = tmp_path_factory.mktemp("spark")
    conf = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.shuffle.partitions": "4",
        "spark.default.parallelism": "2",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.warehouse.dir": str(base / "warehouse"),
        "spark.local.dir": str(base / "local"),
        "spark.driver.memory": "1g",
        **s3a_conf(s3_endpoint),
    }
    session = spark_session(SparkConfig(master="local[2]", app_name="vig-spark-tests", conf=conf,
                                        packages=[hadoop_aws_package()],
                                        quick_jit=False))  # a JVM of the whole suite: C2 pays (BENCHMARKS.md)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
