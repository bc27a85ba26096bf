"""The lake: versioned Delta tables (corpus, scores, selection, ...) written and read through Spark.

Every write is one atomic Delta commit that records the job, its config and the code version, and is
idempotent with an app transaction id. Locally (and in tests) Spark executors write the Parquet files
and delta-rs commits them (``backend="delta-rs"``); on a Spark with Delta Lake built in (Databricks)
the same calls use ``format("delta")`` (``backend="native"``). ``VIG_DELTA_BACKEND`` or the
``backend=`` argument overrides the automatic choice.

Example::

    from vig_udf.lake import read_table, register_views, table_history, write_table

    version = write_table(df, "lake/scores", job="score", config={"model": "demo"},
                          app_id="score/demo", app_version=1)
    previous = read_table(spark, "lake/scores", version=version - 1)
    register_views(spark, "lake")  # SELECT ... FROM scores JOIN corpus USING (sample_id)
"""

from vig_udf.lake.backend import BACKEND_ENV, resolve_backend
from vig_udf.lake.read import read_table, table_exists, table_history, table_version
from vig_udf.lake.views import lake_tables, register_views
from vig_udf.lake.write import write_table

__all__ = [
    "BACKEND_ENV",
    "lake_tables",
    "read_table",
    "register_views",
    "resolve_backend",
    "table_exists",
    "table_history",
    "table_version",
    "write_table",
]
