"""Spark SQL over the lake: each table under a root becomes a temporary view of the same name, pinned to
a version."""

from __future__ import annotations

import logging
import re

from vig_udf.lake.paths import STAGING, table_uri
from vig_udf.lake.read import lake_storage, read_table, table_exists, table_version

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def lake_tables(spark, root) -> list[str]:
    """Names of the folders directly under ``root`` that hold a Delta table, sorted (staging excluded)."""
    uri = table_uri(root)
    folders = [e.name for e in lake_storage(spark).list(uri) if e.is_dir]
    return [name for name in folders if name != STAGING and table_exists(spark, f"{uri}/{name}")]


def register_views(
    spark,
    root,
    names: list[str] | None = None,
    *,
    versions: dict[str, int] | None = None,
) -> dict[str, int]:
    """Register the tables under ``root`` as temporary views named after their folders.

    Args:
        names: the tables to register (default: every Delta table folder directly under ``root``).
        versions: pin some tables to a version, e.g. ``{"scores": 3}``; the others use their latest.

    Returns the version each view shows; every view reads that version (``versionAsOf``), so later commits
    do not change it. Example::

        register_views(spark, "lake")
        spark.sql("SELECT c.source, avg(s.vig) FROM scores s JOIN corpus c USING (sample_id) GROUP BY 1")
    """
    uri = table_uri(root)
    versions = dict(versions or {})
    if names is None:
        names = []
        for name in lake_tables(spark, uri):
            if _NAME.match(name):
                names.append(name)
            else:
                log.warning("table folder %r under %s is not a valid view name: not registered", name, uri)
    unknown = sorted(set(versions) - set(names))
    if unknown:
        raise ValueError(f"versions names tables that are not registered: {unknown}; tables: {list(names)}")
    registered: dict[str, int] = {}
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"Table folder {name!r} is not a valid view name; rename it or pass names=[...].")
        path = f"{uri}/{name}"
        version = versions.get(name)
        if version is None:
            version = table_version(spark, path)
        if version is None:
            raise FileNotFoundError(f"No Delta table {name!r} under {uri}; tables there: {lake_tables(spark, uri)}")
        read_table(spark, path, version=version).createOrReplaceTempView(name)
        registered[name] = version
    return registered
