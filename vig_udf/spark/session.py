"""The Spark session of a job, built from its typed config."""

from __future__ import annotations

import os
import sys

from vig_udf.config import SparkConfig


def spark_session(cfg: SparkConfig):
    """Get or create the session; Python workers use this interpreter unless PYSPARK_PYTHON says otherwise."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.master:
        builder = builder.master(cfg.master)
    for key, value in cfg.conf.items():
        builder = builder.config(key, str(value))
    return builder.getOrCreate()
