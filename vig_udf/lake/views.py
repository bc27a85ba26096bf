"""Spark SQL over the lake: each table folder under a root becomes a temporary view of the same name."""

from __future__ import annotations

import re

import pyarrow.fs as pafs
from deltalake import DeltaTable
from pyspark.sql import SparkSession

from vig_udf.lake.backend import NATIVE, resolve_backend
from vig_udf.lake.files import filesystem, table_uri
from vig_udf.lake.read import open_table, read_files, read_table, table_version

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def lake_tables(root) -> list[str]:
    """Names of the folders directly under ``root`` that hold a Delta table, sorted."""
    uri = table_uri(root)
    fs, base = filesystem(uri)
    folders = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return sorted(
        f.base_name
        for f in folders
        if f.type == pafs.FileType.Directory and DeltaTable.is_deltatable(f"{uri}/{f.base_name}")
    )


def register_views(
    spark: SparkSession,
    root,
    names: list[str] | None = None,
    *,
    versions: dict[str, int] | None = None,
    backend: str | None = None,
) -> dict[str, int]:
    """Register the tables under ``root`` as temporary views named after their folders.

    Args:
        names: the tables to register (default: every Delta table folder directly under ``root``).
        versions: pin some tables to a version, e.g. ``{"scores": 3}``; the others use their latest.

    Returns the version each view shows; every view is pinned to it (later commits do not change it).
    Example::

        register_views(spark, "lake")
        spark.sql("SELECT c.source, avg(s.vig) FROM scores s JOIN corpus c USING (sample_id) GROUP BY 1")
    """
    uri = table_uri(root)
    versions = dict(versions or {})
    if names is None:
        names = lake_tables(uri)
    unknown = sorted(set(versions) - set(names))
    if unknown:
        raise ValueError(f"versions names tables that are not registered: {unknown}; tables: {list(names)}")
    native = resolve_backend(spark, backend) == NATIVE
    registered: dict[str, int] = {}
    for name in names:
        if not _NAME.match(name):
            raise ValueError(f"Table folder {name!r} is not a valid view name; rename it or pass names=[...].")
        path = f"{uri}/{name}"
        if native:
            version = versions.get(name)
            if version is None:
                version = table_version(path, spark=spark, backend=backend)
            df = read_table(spark, path, version=version, backend=backend)
        else:
            if not DeltaTable.is_deltatable(path):
                raise FileNotFoundError(f"No Delta table {name!r} under {uri}; tables there: {lake_tables(uri)}")
            table = open_table(path, versions.get(name))
            version, df = table.version(), read_files(spark, table)
        df.createOrReplaceTempView(name)
        registered[name] = version
    return registered
