"""Reading tables with Delta Lake's Spark engine: a DataFrame at a version (``versionAsOf``), and the
table's history (``DESCRIBE HISTORY``). Rows are read by Spark SQL or the DataFrame reader, so they read alike on a
classic session and on Spark Connect (Databricks standard and serverless).

Whether a table exists, its latest version and the commit info of one version are read from its ``_delta_log``
through the session's storage layer instead (the log's file names and one commit file, as Delta's protocol
lays them out): no Spark job, where ``DESCRIBE HISTORY`` takes about a second in a fresh JVM (BENCHMARKS.md)."""

from __future__ import annotations

import json
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
    return log_version(storage, path) is not None


def log_version(storage, path) -> int | None:
    """The latest version in the ``_delta_log`` of ``path`` (the highest commit or checkpoint number), or None
    when it holds neither (no table). Read through the storage layer: one listing, no Spark job. (A table with
    catalog-managed or coordinated commits, which the lake's path-based tables do not enable, may hold its
    newest commits elsewhere until they are backfilled into the log.)"""
    log = join(table_uri(path), "_delta_log")
    return max((int(e.name[:20]) for e in storage.list(log) if not e.is_dir and _COMMIT_FILE.match(e.name)),
               default=None)


def log_commit(storage, path, version: int) -> dict | None:
    """The commit of ``version`` as a row of ``DESCRIBE HISTORY`` (``version``, ``timestamp`` in ms, ``operation``,
    ``userMetadata``, ``operationMetrics``), read from that version's commit file in the ``_delta_log``; None when
    the log no longer holds the file (removed by log clean-up) or it has no commit info."""
    try:
        text = storage.read_text(join(table_uri(path), "_delta_log", f"{version:020d}.json"))
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        info = json.loads(line).get("commitInfo") if line.strip() else None
        if isinstance(info, dict):
            return {"version": version, "timestamp": info.get("timestamp"), "operation": info.get("operation"),
                    "userMetadata": info.get("userMetadata"), "operationMetrics": info.get("operationMetrics")}
    return None


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
    """The table's commits, newest first: ``version``, ``timestamp`` (the commit's own time, a naive local
    datetime), ``operation``, ``metrics`` and the commit metadata (``job``, ``config`` as a dict,
    ``code_version``, ``write_id``, ``app_id``, ``app_version``; ``None`` where absent).

    Read from the commit files in the ``_delta_log`` through the session's storage layer (the files ``DESCRIBE
    HISTORY`` reads, without a Spark job); a log with a damaged or missing commit is left to ``DESCRIBE
    HISTORY``, so that Delta's own error says what is wrong."""
    from vig_udf.lake.log_check import log_history, read_log

    uri = table_uri(path)
    _require(spark, uri)
    report = read_log(lake_storage(spark), uri, newest=limit)
    if report.damaged or report.missing:
        return [history_entry(row) for row in history_rows(spark, uri, limit=limit)]
    return log_history(report, limit=limit)


def table_commit(spark, path, version: int | None = None) -> dict | None:
    """The :func:`table_history` entry of ``version`` (default: the latest), or ``None`` if there is no table or
    its log no longer has that version. Its ``write_id`` (or, for a commit without one, its ``timestamp``)
    tells this version from a version of the same number of a table recreated at the same path. Read from that
    version's commit file (no Spark job); a damaged one is left to ``DESCRIBE HISTORY``, for Delta's error."""
    from vig_udf.lake.log_check import commit_entry

    uri = table_uri(path)
    storage = lake_storage(spark)
    latest = log_version(storage, uri)
    if latest is None or (version is not None and not 0 <= version <= latest):
        return None
    try:
        row = log_commit(storage, uri, latest if version is None else int(version))
    except (ValueError, UnicodeDecodeError):
        rows = history_rows(spark, uri, limit=1, version=version)
        return history_entry(rows[0]) if rows else None
    if row is None:
        return None
    return commit_entry(row["version"], row)


def table_version(spark, path) -> int | None:
    """The latest version of the table at ``path``, or ``None`` if there is no table (:func:`log_version`)."""
    return log_version(lake_storage(spark), path)
