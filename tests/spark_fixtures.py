"""Spark fixtures: ONE local SparkSession for the whole test session (starting Spark takes seconds).

Tests that use it are marked ``@pytest.mark.spark`` (deselect with ``-m "not spark"``). Without Java
the fixture skips them with the reason.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest


def _java_available() -> bool:
    java_home = os.environ.get("JAVA_HOME")
    return bool(shutil.which("java") or (java_home and os.path.exists(os.path.join(java_home, "bin", "java"))))


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """A ``local[2]`` SparkSession: no UI, 4 shuffle partitions, Arrow on, UTC, a temporary warehouse.

    Python workers run this interpreter (``PYSPARK_PYTHON=sys.executable``), so they see the same
    packages as the tests.
    """
    if not _java_available():
        pytest.skip("Spark tests need Java 17+ (install a JDK or set JAVA_HOME)")
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    base = tmp_path_factory.mktemp("spark")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("vig-spark-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "2")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", str(base / "warehouse"))
        .config("spark.local.dir", str(base / "local"))
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
