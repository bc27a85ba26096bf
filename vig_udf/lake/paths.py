"""Table locations: every table path is a URI (a local folder, ``s3a:``, ``abfss:``, ``gs:``, ``dbfs:/``, a Unity
Catalog volume), spelled one way (:func:`vig_udf.storage.canonical`); a path without a scheme is a local folder,
made absolute against the working folder. No ``os.path`` call ever touches a URI: a lake on object storage
stays exactly as written.
"""

from __future__ import annotations

from vig_udf.storage import canonical, spark_path

STAGING = "_staging"  # <lake>/_staging/<table>/<write id>: rows a job has computed but not yet merged


def table_uri(path) -> str:
    """The location of a table or lake root as the product stores and prints it (no trailing slash)."""
    return canonical(path)


def lake_table(lake, name: str) -> str:
    """The location of the table ``name`` under the lake root ``lake``."""
    return f"{table_uri(lake)}/{name}"


def staging_folder(lake_or_table, table: str | None = None) -> str:
    """Where a job stages rows for ``table`` (default: the last path segment of ``lake_or_table``)."""
    uri = table_uri(lake_or_table)
    if table is None:
        root, _, table = uri.rpartition("/")
    else:
        root = uri
    return f"{root}/{STAGING}/{table}"


def delta_sql(path) -> str:
    """The table at ``path`` as Spark SQL names a path-based Delta table: ``delta.`<uri>```."""
    return "delta.`" + spark_path(path).replace("`", "``") + "`"
