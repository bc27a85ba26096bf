"""The Spark session of a job, built from its typed config."""

from __future__ import annotations

import os
import sys

from pydantic import BaseModel, ConfigDict, Field


class SparkConfig(BaseModel):
    """Spark settings of a job. ``conf`` is passed to the session builder as is."""

    model_config = ConfigDict(extra="forbid")

    master: str | None = Field("local[*]", description="Spark master; None = leave it to spark-submit")
    app_name: str = Field("vig-spark", description="application name")
    conf: dict[str, str] = Field(default_factory=dict, description="any spark.* setting")


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
