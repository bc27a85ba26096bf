"""Writing tables with Delta Lake's Spark engine: one Delta commit per call, carrying the job's metadata.

- :func:`write_table`: a DataFrame appended to (or replacing, or creating) a table, through
  ``format("delta")`` with ``userMetadata`` and, for an idempotent write, ``txnAppId`` / ``txnVersion``.
- :func:`insert_new_rows`: the rows whose key the table does not hold yet, as
  ``MERGE ... WHEN NOT MATCHED THEN INSERT *`` on the key, so that concurrent or repeated runs never write a
  key twice. An expensive source (the scorer's output) is first staged as its own Delta table under
  ``<lake>/_staging``, so that a retry after a concurrent commit re-reads those rows instead of recomputing
  them. With ``replace_when`` it is an upsert: matched rows that meet the condition are replaced
  (``WHEN MATCHED AND ... THEN UPDATE SET *``), as the score job's ``rescore`` does.

A MERGE takes its commit metadata and app transaction from session settings (Delta's only way for DML), so
two threads must not insert through one Spark session at the same time; separate jobs (processes, clusters)
may. Delta's concurrent-modification conflicts are retried (``ATTEMPTS`` attempts in all, pausing 0.5 s, then twice
as long each time with jitter, at most 30 s; a creator that lost the race to create the table merges into it at
once), each retry logged with its cause and the outcome, and then reported as :class:`ConcurrentWriteError`. A failed call commits nothing: files written before the failure
are not part of any version and are removed by ``VACUUM`` (``vig lake vacuum``).
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import Callable

from vig_udf.errors import ConcurrentWriteError
from vig_udf.lake.metadata import commit_metadata, history_entry
from vig_udf.lake.paths import delta_sql, table_uri
from vig_udf.lake.read import history_rows, lake_storage, log_commit, table_exists, table_version
from vig_udf.lake.schema import check_append
from vig_udf.lake.session_conf import session_confs
from vig_udf.storage import spark_path

log = logging.getLogger(__name__)
MODES = ("append", "overwrite", "error")
ATTEMPTS = 8
RETRY_PAUSE_S = 0.5  # before the second attempt; doubling, with jitter, up to RETRY_PAUSE_MAX_S
RETRY_PAUSE_MAX_S = 30.0
# Session settings Delta reads for commands that take no writer options (MERGE): the commit's metadata and
# its app transaction.
USER_METADATA_CONF = "spark.databricks.delta.commitInfo.userMetadata"
TXN_APP_ID_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"
AUTO_MERGE_CONF = "spark.databricks.delta.schema.autoMerge.enabled"


@dataclass(frozen=True)
class Commit:
    """The commit a write made: its table version and how many rows it added."""

    version: int
    rows_added: int | None
    rows_updated: int | None = None  # rows a MERGE replaced (``replace_when``)


def write_table(
    df,
    path,
    *,
    mode: str = "append",
    job: str,
    config: dict,
    app_id: str | None = None,
    app_version: int | None = None,
) -> Commit | None:
    """Write ``df`` to the Delta table at ``path`` in one commit; returns it, or ``None`` if nothing was
    written because the app transaction was already committed.

    Args:
        mode: ``"append"`` (default; creates the table if missing), ``"overwrite"`` (replaces every row and
            the schema, in the same commit) or ``"error"`` (create only; fails if the table exists).
        job, config: the job's name and resolved config, recorded in the commit with the code version.
        app_id, app_version: an idempotent write (Delta's ``txnAppId`` / ``txnVersion``). If the table
            already has a commit of ``app_id`` at ``app_version`` or later, Delta writes nothing.

    Appends match the table's columns by name and type. Example::

        commit = write_table(df, "s3a://bucket/lake/events", job="ingest", config=cfg.model_dump(mode="json"),
                             app_id="events/2024-05-01", app_version=0)
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    _check_app(app_id, app_version)
    spark, uri = df.sparkSession, table_uri(path)
    metadata = commit_metadata(job=job, config=config, write_id=uuid.uuid4().hex, app_id=app_id,
                               app_version=app_version)
    before = table_version(spark, uri)
    if mode == "error" and before is not None:
        raise FileExistsError(f"A Delta table already exists at {uri}; write with mode='append' or 'overwrite'.")

    def attempt() -> None:
        data = df
        if mode == "append" and table_exists(spark, uri):
            data = df.select(*check_append(df.schema, spark.read.format("delta").load(spark_path(uri)).schema,
                                           path=uri))
        _writer(data, mode, metadata, app_id, app_version).save(spark_path(uri))

    _retry_conflicts(attempt, uri)
    return _find_commit(spark, uri, metadata["write_id"], after=before)


def insert_new_rows(
    df,
    path,
    *,
    keys: list[str],
    job: str,
    config: dict,
    app_id: str | None = None,
    app_version: int | None = None,
    staging: str | None = None,
    replace_when: str | None = None,
    staged_config: Callable | None = None,
    add_columns: tuple[str, ...] = (),
) -> Commit | None:
    """Insert the rows of ``df`` whose ``keys`` the table at ``path`` does not hold; create it if missing.

    One ``MERGE ... ON <keys> WHEN NOT MATCHED THEN INSERT *`` commit (the first write creates the table
    with all of ``df``). Returns the commit, or ``None`` if nothing was committed (the app transaction was
    already committed, or Delta had nothing to write). ``df`` must not repeat a key.

    Args:
        staging: a folder (URI) under which ``df`` is first written as a Delta table of its own and read
            back, so that retries never recompute it; deleted afterwards (``vig lake vacuum`` clears one
            left by a killed job). Use it when computing ``df`` is expensive.
        replace_when: the upsert variant: a SQL condition on the table's row (alias ``t``) under which a row
            of ``df`` whose key the table holds replaces it (``WHEN MATCHED AND <condition> THEN UPDATE SET
            *``); rows with a key the table holds that do not meet it are left as they are. The table still
            holds one row per key. The commit's ``rows_updated`` counts the replaced rows.
        staged_config: with ``staging``: a function of the staged rows whose dict is added to ``config`` before
            the commit (a summary of the rows that a rerun can read from the history instead of the table).
        add_columns: columns of ``df`` that a table written before they existed may lack: the merge adds them
            to its schema in the same commit (null in the rows it held).

    Example::

        insert_new_rows(scored, "lake/scores", keys=["sample_id", "scorer_id"], job="score", config=config,
                        staging="lake/_staging/scores")
    """
    if not keys:
        raise ValueError("insert_new_rows needs the table's key columns")
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise ValueError(f"key columns {missing} are not columns of the rows: {df.columns}")
    _check_app(app_id, app_version)
    if staged_config is not None and not staging:
        raise ValueError("staged_config summarises the staged rows: give staging as well")
    spark, uri, write_id = df.sparkSession, table_uri(path), uuid.uuid4().hex
    staged = f"{table_uri(staging)}/{write_id}" if staging else None
    source, before = df, table_version(spark, uri)
    try:
        if staged:
            stage_folder(spark, staged, job)
            df.write.format("delta").mode("error").save(spark_path(staged))
            source = spark.read.format("delta").load(spark_path(staged))
            if staged_config is not None:
                config = {**config, **staged_config(source)}
        metadata = commit_metadata(job=job, config=config, write_id=write_id, app_id=app_id, app_version=app_version)
        _retry_conflicts(lambda: _create_or_merge(source, uri, keys, metadata, app_id, app_version, replace_when,
                                                  add_columns), uri, exists=lambda: table_exists(spark, uri))
    finally:
        if staged:
            delete_staged(spark, staged)
    return _find_commit(spark, uri, write_id, after=before)


def _create_or_merge(source, uri: str, keys: list[str], metadata: dict, app_id, app_version,
                     replace_when: str | None = None, add_columns: tuple[str, ...] = ()) -> None:
    from pyspark.errors import AnalysisException
    from pyspark.sql.types import StructType

    spark = source.sparkSession
    if not table_exists(spark, uri):
        try:
            _writer(source, "error", metadata, app_id, app_version).save(spark_path(uri))
            return
        except AnalysisException:
            if not table_exists(spark, uri):
                raise
            # another writer created the table between the check and this write: merge instead
    table_schema = spark.read.format("delta").load(spark_path(uri)).schema
    lacking = [f for f in source.schema if f.name in add_columns and f.name not in table_schema.fieldNames()]
    columns = check_append(source.schema, StructType([*table_schema, *lacking]), path=uri)
    condition = " AND ".join(f"t.`{key}` <=> s.`{key}`" for key in keys)
    view = f"vig_merge_source_{uuid.uuid4().hex}"
    matched = f"WHEN MATCHED AND ({replace_when}) THEN UPDATE SET * " if replace_when is not None else ""
    statement = (f"MERGE INTO {delta_sql(uri)} AS t USING {view} AS s ON {condition} "
                 f"{matched}WHEN NOT MATCHED THEN INSERT *")
    confs = {USER_METADATA_CONF: json.dumps(metadata)}
    if lacking:  # MERGE ... INSERT * adds the source's new columns to the table's schema in its own commit
        confs[AUTO_MERGE_CONF] = "true"
    if app_id is not None:
        confs.update({TXN_APP_ID_CONF: app_id, TXN_VERSION_CONF: str(app_version)})
    source.select(*columns).createOrReplaceTempView(view)
    try:
        with session_confs(spark, confs):
            spark.sql(statement).collect()  # the MERGE's one row of metrics
    finally:
        spark.catalog.dropTempView(view)


def stage_folder(spark, uri: str, job: str) -> str:
    """Claim the staging folder ``uri`` for this process (its owner marker, :mod:`vig_udf.lake.owners`), so that
    clean-ups by other jobs leave it alone while this one lives; returns ``uri``."""
    from vig_udf.lake.owners import claim

    claim(lake_storage(spark), uri, job)
    return uri


def delete_staged(spark, uri: str) -> bool:
    """Delete a staged folder and its owner marker; returns whether anything was deleted. Never raises: a folder
    left behind is cleared by the next job or ``vig lake vacuum`` once its owner is gone."""
    from vig_udf.lake.owners import release

    storage = lake_storage(spark)
    try:
        deleted = storage.delete(uri)
        release(storage, uri)
        return deleted
    except Exception as error:  # noqa: BLE001 - clean-up must not mask the job's own outcome
        log.warning("could not delete %s (%s); the next job or `vig lake vacuum` clears it", uri, error)
        return False


def _writer(df, save_mode: str, metadata: dict, app_id, app_version):
    writer = df.write.format("delta").mode(save_mode).option("userMetadata", json.dumps(metadata))
    if save_mode == "overwrite":
        writer = writer.option("overwriteSchema", "true")
    if app_id is not None:
        writer = writer.option("txnAppId", app_id).option("txnVersion", str(app_version))
    return writer


def _check_app(app_id, app_version) -> None:
    if (app_id is None) != (app_version is None):
        raise ValueError("Give both app_id and app_version for an idempotent write, or neither.")
    if app_version is not None and (not isinstance(app_version, int) or app_version < 0):
        raise ValueError(f"app_version must be a non-negative int, got {app_version!r}")


def conflict_exceptions() -> tuple[type, ...]:
    """Delta's commit-conflict exception classes, as a classic session and Spark Connect both raise them."""
    import delta.exceptions
    from delta.exceptions import base

    try:
        import delta.connect.exceptions  # noqa: F401 - maps Connect's server errors onto the same classes
    except ImportError:  # no Spark Connect client installed: classic sessions only
        pass
    # delta-spark's conflict classes do not share a base class: name each of them
    return tuple(getattr(base, name) for name in delta.exceptions.__all__)


def _retry_conflicts(write, uri: str, exists: Callable[[], bool] | None = None) -> None:
    """Run ``write``; when a concurrent commit conflicts with it, run it again (it re-reads the table). A write
    that meant to create the table and lost that race to another creator (``exists`` says the table is there
    now) merges into it at once, without a pause. Every retry is logged with its cause, and so is the outcome."""
    conflicts = conflict_exceptions()
    for attempt in range(1, ATTEMPTS + 1):
        existed = exists() if exists is not None else True
        try:
            write()
            if attempt > 1:
                log.warning("%s: committed on attempt %d of %d", uri, attempt, ATTEMPTS)
            return
        except conflicts as error:
            cause = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            if attempt == ATTEMPTS:
                log.warning("%s: gave up after %d attempts, each conflicting with a concurrent commit (last: %s)",
                            uri, ATTEMPTS, cause)
                raise ConcurrentWriteError(
                    f"{uri}: each of {ATTEMPTS} attempts of this commit conflicted with a concurrent commit "
                    f"({type(error).__name__}); this commit wrote nothing (earlier commits of the same job stay). "
                    "Run the job again when the other writers are done: a rerun adds only what is missing."
                ) from error
            if not existed and exists():
                log.warning("%s: another writer created the table first (%s); merging into it now, attempt %d of %d",
                            uri, cause, attempt + 1, ATTEMPTS)
                continue
            pause = min(RETRY_PAUSE_MAX_S, RETRY_PAUSE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
            log.warning("%s: concurrent commit (%s); attempt %d of %d in %.1f s", uri, cause, attempt + 1, ATTEMPTS,
                        pause)
            time.sleep(pause)


def _find_commit(spark, uri: str, write_id: str, *, after: int | None) -> Commit | None:
    """The commit carrying ``write_id`` among those after version ``after`` (None: the table is new), or None
    when this call committed nothing. Read from the commit files in the log, newest first (no Spark job); from
    ``DESCRIBE HISTORY`` when the log no longer holds one of them."""
    latest = table_version(spark, uri)
    if latest is None:
        return None
    newer = latest - (after if after is not None else -1)
    if newer <= 0:
        return None
    storage = lake_storage(spark)
    commits = (log_commit(storage, uri, version) for version in range(latest, latest - newer, -1))
    for row in commits:
        if row is None:  # a commit file gone: let Delta's history say
            break
        found = _commit_of(row, write_id)
        if found is not None:
            return found
    else:
        return None
    for row in history_rows(spark, uri, limit=newer):
        found = _commit_of(row, write_id)
        if found is not None:
            return found
    return None


def _commit_of(row: dict, write_id: str) -> Commit | None:
    entry = history_entry(row)
    if entry["write_id"] != write_id:
        return None
    metrics = entry["metrics"]
    rows = metrics.get("numTargetRowsInserted", metrics.get("numOutputRows"))
    return Commit(entry["version"], rows, metrics.get("numTargetRowsUpdated"))
