"""Table maintenance: ``OPTIMIZE`` (compact small files) and ``VACUUM`` (delete files no version needs).

VACUUM deletes the data files that no table version within the retention period references: files of
writes that were killed before their commit, and files that later commits replaced. Time travel to a
version older than the retention may then fail, and a job still writing when VACUUM runs with a short
retention can lose its files; Delta therefore refuses retentions under 168 hours unless the check is
turned off. The same retention applies to ``<lake>/_staging``: folders whose newest file is older are
deleted (a job that is killed leaves its staged rows there).
"""

from __future__ import annotations

import time

from vig_udf.lake.paths import STAGING, delta_sql, table_uri
from vig_udf.lake.read import lake_storage
from vig_udf.lake.session_conf import session_confs
from vig_udf.lake.views import lake_tables
from vig_udf.lake.write import delete_staged

DEFAULT_RETENTION_HOURS = 168.0
RETENTION_CHECK_CONF = "spark.databricks.delta.retentionDurationCheck.enabled"


def _tables(spark, lake, tables: list[str] | None) -> list[str]:
    present = lake_tables(spark, lake)
    unknown = sorted(set(tables or []) - set(present))
    if unknown:
        raise FileNotFoundError(f"no Delta table {unknown} under {table_uri(lake)}; tables there: {present}")
    return list(tables) if tables else present


def optimize_lake(spark, lake, tables: list[str] | None = None) -> dict[str, dict]:
    """Compact the small files of each table (all tables of the lake by default); returns Delta's metrics."""
    results = {}
    for name in _tables(spark, lake, tables):
        row = spark.sql(f"OPTIMIZE {delta_sql(f'{table_uri(lake)}/{name}')}").first()
        metrics = row["metrics"].asDict() if row and row["metrics"] is not None else {}
        results[name] = {k: metrics.get(k) for k in ("numFilesAdded", "numFilesRemoved")}
    return results


def vacuum_lake(spark, lake, tables: list[str] | None = None, *, retain_hours: float = DEFAULT_RETENTION_HOURS,
                retention_check: bool = True) -> dict:
    """VACUUM each table and clear stale staging folders; returns what was removed from staging.

    ``retention_check=False`` allows ``retain_hours`` under 168 (Delta's safety check); only do that when no
    job is writing to the lake.
    """
    if retention_check and retain_hours < DEFAULT_RETENTION_HOURS:
        raise ValueError(f"retain_hours={retain_hours} is under Delta's {DEFAULT_RETENTION_HOURS:.0f}-hour safety "
                         "check: files that running jobs or time travel still need could be deleted. Set "
                         "retention_check=false when no job writes to the lake.")
    confs = {} if retention_check else {RETENTION_CHECK_CONF: "false"}
    names = _tables(spark, lake, tables)
    with session_confs(spark, confs):
        for name in names:
            spark.sql(f"VACUUM {delta_sql(f'{table_uri(lake)}/{name}')} RETAIN {float(retain_hours)} HOURS").collect()
    return {"tables": names, "staging_removed": clear_staging(spark, lake, retain_hours=retain_hours)}


def clear_staging(spark, lake, *, retain_hours: float) -> list[str]:
    """Delete the staging folders under ``<lake>/_staging`` (``<table>/<write id>``) whose newest file is older
    than the retention and whose owner (:mod:`vig_udf.lake.owners`) is not live: those of killed jobs."""
    from vig_udf.lake.owners import JOBS, is_live, owner_of

    storage = lake_storage(spark)
    root = f"{table_uri(lake)}/{STAGING}"
    if not storage.is_dir(root):
        return []
    cutoff_ns = (time.time() - retain_hours * 3600) * 1e9
    removed = []
    for table in (e for e in storage.list(root) if e.is_dir and e.name != JOBS):
        for write in (e for e in storage.list(table.uri) if e.is_dir):
            times = [e.mtime_ns for e in storage.files(write.uri) if e.mtime_ns is not None]
            newest = max(times, default=write.mtime_ns)
            if newest is None or newest > cutoff_ns or is_live(owner_of(storage, write.uri), stale_hours=retain_hours):
                continue
            if delete_staged(spark, write.uri):
                removed.append(f"{table.name}/{write.name}")
    return removed
