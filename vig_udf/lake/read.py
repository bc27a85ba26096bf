"""Reading tables with Delta Lake's Spark engine: a DataFrame at a version (``versionAsOf``), and the
table's latest version and history (``DESCRIBE HISTORY``)."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from vig_udf.lake.metadata import history_entry
from vig_udf.lake.paths import table_uri

HISTORY_COLUMNS = ("version", "timestamp", "operation", "userMetadata", "operationMetrics")


def table_exists(spark: SparkSession, path) -> bool:
    """Whether ``path`` holds a Delta table."""
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, table_uri(path))


def _require(spark: SparkSession, uri: str) -> None:
    if not table_exists(spark, uri):
        raise FileNotFoundError(f"No Delta table at {uri} (no _delta_log there); check the path or write it first.")


def read_table(spark: SparkSession, path, *, version: int | None = None) -> DataFrame:
    """The rows of the Delta table at ``path`` as a DataFrame, at ``version`` (default: the latest).

    Example::

        previous = read_table(spark, "lake/scores", version=3)
    """
    uri = table_uri(path)
    _require(spark, uri)
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", int(version))
    return reader.load(uri)


def table_history(spark: SparkSession, path, *, limit: int | None = None) -> list[dict]:
    """The table's commits, newest first: ``version``, ``timestamp``, ``operation``, ``metrics`` and the
    commit metadata (``job``, ``config`` as a dict, ``code_version``, ``write_id``, ``app_id``,
    ``app_version``; ``None`` where absent)."""
    from delta.tables import DeltaTable

    uri = table_uri(path)
    _require(spark, uri)
    rows = DeltaTable.forPath(spark, uri).history(limit).select(*HISTORY_COLUMNS).collect()
    return [history_entry(row.asDict()) for row in rows]


def table_commit(spark: SparkSession, path, version: int | None = None) -> dict | None:
    """The :func:`table_history` entry of ``version`` (default: the latest), or ``None`` if there is no table or
    its history no longer has that version. Its ``write_id`` (or, for a commit without one, its ``timestamp``)
    tells this version from a version of the same number of a table recreated at the same path."""
    from delta.tables import DeltaTable

    uri = table_uri(path)
    if not table_exists(spark, uri):
        return None
    history = DeltaTable.forPath(spark, uri).history(None if version is not None else 1)
    if version is not None:
        history = history.where(f"version = {int(version)}")
    row = history.select(*HISTORY_COLUMNS).first()
    return history_entry(row.asDict()) if row else None


def table_version(spark: SparkSession, path) -> int | None:
    """The latest version of the table at ``path``, or ``None`` if there is no table."""
    from delta.tables import DeltaTable

    uri = table_uri(path)
    if not table_exists(spark, uri):
        return None
    return DeltaTable.forPath(spark, uri).history(1).select("version").first()[0]
