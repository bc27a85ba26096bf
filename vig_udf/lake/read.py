"""Reading tables: a DataFrame at a version (time travel), and the table's version and history.

On the delta-rs backend the driver asks delta-rs which Parquet files make up the version and Spark
reads exactly those files with the table's schema, so the read is pinned to that version even if the
table changes while the DataFrame is in use. ``table_version``, ``table_history`` and ``table_exists``
read the Delta log with delta-rs, whichever engine wrote it; pass ``spark=`` to use Delta Lake on Spark
instead where it is the backend (for paths only Spark can open, such as ``dbfs:/``).
"""

from __future__ import annotations

from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from vig_udf.lake.backend import NATIVE, resolve_backend
from vig_udf.lake.files import table_uri
from vig_udf.lake.metadata import history_entry
from vig_udf.lake.schema import spark_schema

# Reader features under which the table's data files alone are not the table's rows.
UNSUPPORTED_FEATURES = ("deletionVectors", "columnMapping")


def open_table(uri: str, version: int | None = None) -> DeltaTable:
    """The delta-rs table at ``uri`` at ``version``; errors name the path and the versions there are."""
    if not DeltaTable.is_deltatable(uri):
        raise FileNotFoundError(f"No Delta table at {uri} (no _delta_log folder); check the path or write it first.")
    try:
        return DeltaTable(uri, version=version)
    except Exception as error:
        latest = DeltaTable(uri).version()
        raise ValueError(f"Cannot load version {version} of {uri} (versions 0 to {latest}): {error}") from error


def _native(spark: SparkSession | None, backend: str | None) -> bool:
    return spark is not None and resolve_backend(spark, backend) == NATIVE


def read_table(spark: SparkSession, path, *, version: int | None = None, backend: str | None = None) -> DataFrame:
    """The rows of the Delta table at ``path`` as a DataFrame, at ``version`` (default: the latest).

    An empty table gives an empty DataFrame with the table's schema. Example::

        previous = read_table(spark, "lake/scores", version=3)
    """
    uri = table_uri(path)
    if _native(spark, backend):
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(uri)
    return read_files(spark, open_table(uri, version))


def read_files(spark: SparkSession, table: DeltaTable) -> DataFrame:
    """The rows of a loaded delta-rs table (at its loaded version), read by Spark from its files."""
    unsupported = set(UNSUPPORTED_FEATURES) & set(table.protocol().reader_features or [])
    if unsupported:
        raise NotImplementedError(
            f"The Delta table at {table.table_uri} uses {sorted(unsupported)}, which this reader does not "
            "apply; read it with backend='native' on a Spark with Delta Lake."
        )
    schema = spark_schema(table.schema())
    files = table.file_uris()
    if not files:
        return spark.createDataFrame([], schema)
    reader = spark.read.schema(schema)
    if table.metadata().partition_columns:  # partition values live in the folder names
        reader = reader.option("basePath", table.table_uri)
    return reader.parquet(*files).select(*schema.fieldNames())


def table_exists(path, *, spark: SparkSession | None = None, backend: str | None = None) -> bool:
    """Whether ``path`` holds a Delta table."""
    uri = table_uri(path)
    if _native(spark, backend):
        from delta.tables import DeltaTable as SparkDeltaTable

        return SparkDeltaTable.isDeltaTable(spark, uri)
    return DeltaTable.is_deltatable(uri)


def table_version(path, *, spark: SparkSession | None = None, backend: str | None = None) -> int | None:
    """The latest version of the table at ``path``, or ``None`` if there is no table."""
    if not table_exists(path, spark=spark, backend=backend):
        return None
    if _native(spark, backend):
        return table_history(path, limit=1, spark=spark, backend=backend)[0]["version"]
    return DeltaTable(table_uri(path)).version()


def table_history(
    path, *, limit: int | None = None, spark: SparkSession | None = None, backend: str | None = None
) -> list[dict]:
    """The table's commits, newest first, each a dict with ``version``, ``timestamp``, ``operation`` and
    the commit metadata (``job``, ``config`` as a dict, ``code_version``, ``write_id``, ``app_id``,
    ``app_version``; ``None`` where absent).
    """
    uri = table_uri(path)
    if _native(spark, backend):
        from delta.tables import DeltaTable as SparkDeltaTable

        rows = SparkDeltaTable.forPath(spark, uri).history(limit).collect()
        commits = [
            {
                "version": r["version"],
                "timestamp": r["timestamp"],
                "operation": r["operation"],
                "userMetadata": r["userMetadata"],
            }
            for r in rows
        ]
    else:
        commits = open_table(uri, None).history(limit)
    return [history_entry(commit) for commit in commits]
