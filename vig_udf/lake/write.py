"""``write_table``: one DataFrame, one atomic Delta commit with the job's metadata, idempotent reruns."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid

from deltalake import DeltaTable
from pyspark.sql import DataFrame

from vig_udf.lake.backend import NATIVE, resolve_backend
from vig_udf.lake.commit import WriteSpec, already_committed
from vig_udf.lake.datasource import FORMAT, register_data_source
from vig_udf.lake.files import delete_files, files_of_write, table_uri
from vig_udf.lake.metadata import commit_metadata, history_entry
from vig_udf.lake.schema import check_append, check_partition_columns, delta_schema, spark_schema, table_schema

log = logging.getLogger(__name__)
MODES = ("append", "overwrite", "error")


def write_table(
    df: DataFrame,
    path,
    *,
    mode: str = "append",
    job: str,
    config: dict,
    app_id: str | None = None,
    app_version: int | None = None,
    partition_by: list[str] | str | None = None,
    backend: str | None = None,
) -> int | None:
    """Write ``df`` to the Delta table at ``path`` in one commit; return the new table version.

    Args:
        mode: ``"append"`` (default; creates the table if missing), ``"overwrite"`` (replaces every row
            and the schema, in the same commit) or ``"error"`` (create only; fails if the table exists).
        job, config: the job's name and resolved config, recorded in the commit with the code version.
        app_id, app_version: an idempotent write. If the table already has a commit for ``app_id`` at
            ``app_version`` or later, nothing is written and ``None`` is returned. Use a stable id per
            logical output (e.g. ``"score/<scorer hash>/<input version>"``) and bump the version per run.
        partition_by: partition columns of a new table; writes to an existing table use the table's.
        backend: ``"delta-rs"``, ``"native"`` or ``"auto"`` (default: ``$VIG_DELTA_BACKEND`` or auto).

    On the delta-rs backend, Spark tasks write Parquet files into the table folder and the driver
    commits them with delta-rs; a failed job commits nothing and deletes its files. Columns are stored
    nullable; an append must have the table's columns (any order) with the same types.

    Example::

        version = write_table(scores_df, "lake/scores", job="score", config=cfg.model_dump(mode="json"),
                              app_id="score/3f2a", app_version=1)
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if (app_id is None) != (app_version is None):
        raise ValueError("Give both app_id and app_version for an idempotent write, or neither.")
    if app_version is not None and (not isinstance(app_version, int) or app_version < 0):
        raise ValueError(f"app_version must be a non-negative int, got {app_version!r}")
    partition_by = [partition_by] if isinstance(partition_by, str) else list(partition_by or [])
    uri = table_uri(path)
    write_id = uuid.uuid4().hex
    metadata = commit_metadata(job=job, config=config, write_id=write_id, app_id=app_id, app_version=app_version)
    if resolve_backend(df.sparkSession, backend) == NATIVE:
        return _write_native(df, uri, mode, metadata, app_id, app_version, partition_by)

    if already_committed(uri, app_id, app_version):
        log.info("%s: app transaction %s %s already committed; skipping the write", uri, app_id, app_version)
        return None
    exists = DeltaTable.is_deltatable(uri)
    if exists and mode == "error":
        raise FileExistsError(f"A Delta table already exists at {uri}; write with mode='append' or 'overwrite'.")
    schema = table_schema(df.schema)
    if exists:
        df, schema, partition_by = _match_table(df, uri, mode, partition_by)
    check_partition_columns(schema, partition_by)
    delta_schema(schema)  # fail before running the job if Delta cannot store a column
    spec = WriteSpec(
        uri=uri,
        mode=mode,
        write_id=write_id,
        schema=schema.json(),
        partition_by=tuple(partition_by),
        metadata=tuple(metadata.items()),
        app_id=app_id,
        app_version=app_version,
    )
    register_data_source(df.sparkSession)
    save_mode = "overwrite" if mode == "overwrite" else "append"  # Python data sources know no "error"
    try:
        df.write.format(FORMAT).option("spec", spec.to_json()).mode(save_mode).save()
    except Exception:
        _sweep_after_failure(df.sparkSession, spec)
        raise
    return _committed_version(DeltaTable(uri).history(limit=100), write_id, uri, app_id, app_version)


def _sweep_after_failure(spark, spec: WriteSpec, *, wait_s: float = 60.0) -> None:
    """Delete the files of a failed write that tasks killed after Spark's abort left behind.

    Spark aborts the write as soon as one task fails; tasks of the same stage that were still running are
    killed afterwards and may create their file after the abort's own clean-up. Wait until no stage is
    active and the folder stops changing, then remove every file of this write (unless it was committed).
    """
    tracker = spark.sparkContext.statusTracker()
    deadline = time.monotonic() + wait_s
    while tracker.getActiveStageIds() and time.monotonic() < deadline:
        time.sleep(0.1)
    previous = None
    while time.monotonic() < deadline:
        current = sorted(files_of_write(spec.uri, spec.write_id))
        if current == previous:
            break
        previous = current
        time.sleep(0.5)
    leftovers = files_of_write(spec.uri, spec.write_id)
    if DeltaTable.is_deltatable(spec.uri):
        committed = {os.path.basename(u) for u in DeltaTable(spec.uri).file_uris()}
        if any(os.path.basename(f) in committed for f in leftovers):
            log.warning("write %s failed after its commit landed in %s; keeping its files", spec.write_id, spec.uri)
            return
    delete_files(spec.uri, leftovers)


def _match_table(df: DataFrame, uri: str, mode: str, partition_by: list[str]):
    """(DataFrame, table schema, partition columns) for a write to the existing table at ``uri``.

    Appends must match the table's columns by name and type and take its column order; every write
    keeps the table's partitioning.
    """
    table = DeltaTable(uri)
    table_partitions = table.metadata().partition_columns
    if partition_by and partition_by != table_partitions:  # delta-rs would keep the old partitioning
        raise ValueError(
            f"{uri} is partitioned by {table_partitions}, not {partition_by}: the partitioning of an existing "
            "table cannot change. Omit partition_by, or write to a new path."
        )
    if mode != "append":
        return df, table_schema(df.schema), table_partitions
    schema = spark_schema(table.schema())
    return df.select(*check_append(df.schema, schema, path=uri)), schema, table_partitions


def _committed_version(history: list[dict], write_id: str, uri: str, app_id, app_version) -> int | None:
    """The version of the commit carrying ``write_id``, or None if the app transaction won elsewhere."""
    for commit in history:
        if history_entry(commit)["write_id"] == write_id:
            return commit["version"]
    if app_id is not None:
        return None  # committed meanwhile by another run of the same app transaction: nothing written
    raise RuntimeError(f"The write {write_id} finished but its commit is not among the last 100 commits of {uri}.")


def _write_native(df, uri, mode, metadata, app_id, app_version, partition_by) -> int | None:
    """Delta Lake built into Spark: the same write through ``format("delta")``."""
    from delta.tables import DeltaTable as SparkDeltaTable

    writer = df.write.format("delta").mode("errorifexists" if mode == "error" else mode)
    writer = writer.option("userMetadata", json.dumps(metadata))
    if mode == "overwrite":
        writer = writer.option("overwriteSchema", "true")
    if app_id is not None:
        writer = writer.option("txnAppId", app_id).option("txnVersion", str(app_version))
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(uri)
    rows = SparkDeltaTable.forPath(df.sparkSession, uri).history(100).select("version", "userMetadata").collect()
    history = [{"version": row["version"], "userMetadata": row["userMetadata"]} for row in rows]
    return _committed_version(history, metadata["write_id"], uri, app_id, app_version)
