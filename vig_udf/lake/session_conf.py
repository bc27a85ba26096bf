"""The session's kind, and session settings set for one command and restored afterwards (Delta reads some only
from the session)."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def session_confs(spark, confs: dict[str, str]):
    """Set ``confs`` on the session for the duration of the block, then restore what was there."""
    previous = {key: spark.conf.get(key, None) for key in confs}
    try:
        for key, value in confs.items():
            spark.conf.set(key, value)
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def is_connect(spark) -> bool:
    """Whether ``spark`` is a Spark Connect session (no SparkContext, no py4j)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")
