"""Reading tables with Delta Lake's Spark engine: a DataFrame at a version (``versionAsOf``), and the
table's latest version and history (``DESCRIBE HISTORY``). Everything here is Spark SQL or the DataFrame
reader, so it runs alike on a classic session and on Spark Connect (Databricks standard and serverless)."""

from __future__ import annotations

import re

from vig_udf.lake.metadata import history_entry
from vig_udf.lake.paths import delta_sql, table_uri
from vig_udf.storage import join, spark_path

HISTORY_COLUMNS = ("version", "timestamp", "operation", "userMetadata", "operationMetrics")
_COMMIT_FILE = re.compile(r"^\d{20}\.(json|checkpoint(\.\d+\.\d+)?\.parquet)$|^\d{20}\.checkpoint\.[^/]+\.(json|parquet)$")


def lake_storage(spark):
    """The :class:`~vig_udf.storage.Storage` of ``spark``'s settings, made once per session."""
    from vig_udf.storage import session_storage

    cached = getattr(spark, "_vig_storage", None)
    if cached is None:
        cached = session_storage(spark)
        try:
            spark._vig_storage = cached
        except AttributeError:  # a session class that takes no attributes: build it each time
            pass
    return cached


def table_exists(spark, path) -> bool:
    """Whether ``path`` holds a Delta table (:func:`has_delta_log`, through the session's storage settings)."""
    return has_delta_log(lake_storage(spark), path)


def has_delta_log(storage, path) -> bool:
    """Whether ``path`` holds a Delta table: its ``_delta_log`` has a commit or a checkpoint (a folder with
    only staged or temporary files in its log is not a table). Read through the storage layer: no Spark job."""
    log = join(table_uri(path), "_delta_log")
    return any(not e.is_dir and _COMMIT_FILE.match(e.name) for e in storage.list(log))


def _require(spark, uri: str) -> None:
    if not table_exists(spark, uri):
        raise FileNotFoundError(f"No Delta table at {uri} (no _delta_log there); check the path or write it first.")


def read_table(spark, path, *, version: int | None = None):
    """The rows of the Delta table at ``path`` as a DataFrame, at ``version`` (default: the latest).

    Example::

        previous = read_table(spark, "lake/scores", version=3)
    """
    uri = table_uri(path)
    _require(spark, uri)
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", int(version))
    return reader.load(spark_path(uri))


def history_rows(spark, path, *, limit: int | None = None, version: int | None = None) -> list[dict]:
    """Rows of ``DESCRIBE HISTORY`` (the :data:`HISTORY_COLUMNS`), newest first: the last ``limit`` commits, or
    the commit of ``version``."""
    statement = f"DESCRIBE HISTORY {delta_sql(path)}"
    if limit is not None and version is None:
        statement += f" LIMIT {int(limit)}"
    history = spark.sql(statement)
    if version is not None:
        history = history.where(f"version = {int(version)}")
    # bounded: ``limit`` commits, or one table's history (a row per commit)
    return [row.asDict() for row in history.select(*HISTORY_COLUMNS).collect()]


def table_history(spark, path, *, limit: int | None = None) -> list[dict]:
    """The table's commits, newest first: ``version``, ``timestamp``, ``operation``, ``metrics`` and the
    commit metadata (``job``, ``config`` as a dict, ``code_version``, ``write_id``, ``app_id``,
    ``app_version``; ``None`` where absent)."""
    uri = table_uri(path)
    _require(spark, uri)
    return [history_entry(row) for row in history_rows(spark, uri, limit=limit)]


def table_commit(spark, path, version: int | None = None) -> dict | None:
    """The :func:`table_history` entry of ``version`` (default: the latest), or ``None`` if there is no table or
    its history no longer has that version. Its ``write_id`` (or, for a commit without one, its ``timestamp``)
    tells this version from a version of the same number of a table recreated at the same path."""
    uri = table_uri(path)
    if not table_exists(spark, uri):
        return None
    rows = history_rows(spark, uri, limit=1, version=version)
    return history_entry(rows[0]) if rows else None


def table_version(spark, path) -> int | None:
    """The latest version of the table at ``path``, or ``None`` if there is no table."""
    uri = table_uri(path)
    if not table_exists(spark, uri):
        return None
    return history_rows(spark, uri, limit=1)[0]["version"]
