"""``vig sql`` on Spark (``engine=spark``): the lake's tables as temporary views of Spark SQL with Delta Lake,
for a cluster, Spark Connect, or a file system the local reader does not reach.

The statement must pass both read-only checks of :mod:`vig_udf.lake.readonly` (the text, then the plan that
Spark's parser makes of it). ``<table>@v<n>`` reads that version (:mod:`vig_udf.lake.time_travel`).
"""

from __future__ import annotations

from vig_udf.lake.paths import table_uri
from vig_udf.lake.read import read_table
from vig_udf.lake.readonly import check_read_only
from vig_udf.lake.time_travel import pinned_tables
from vig_udf.lake.views import register_views


def query(spark, root, statement: str, *, limit: int):
    """The first ``limit + 1`` rows of the read-only ``statement`` over the lake at ``root`` as a
    ``pyarrow.Table`` (one row past the limit tells the caller that there were more).

    Example::

        query(spark, "lake", "SELECT status, count(*) AS n FROM scores@v2 GROUP BY status", limit=50)
    """
    check_read_only(statement)
    rewritten, pinned = pinned_tables(statement, quote="`")
    uri = table_uri(root)
    check_read_only(rewritten, spark, lake=uri)  # with Spark's own parser; no file outside the lake
    registered = register_views(spark, uri)
    missing = sorted({name for name, _ in pinned.values()} - set(registered))
    if missing:
        raise FileNotFoundError(f"no table {', '.join(missing)} under {uri} to read a version of; "
                                f"tables: {sorted(registered)}")
    for view, (name, version) in pinned.items():
        read_table(spark, f"{uri}/{name}", version=version).createOrReplaceTempView(f"`{view}`")
    return spark.sql(rewritten).limit(limit + 1).toArrow()
