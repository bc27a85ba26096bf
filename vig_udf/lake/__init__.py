"""The lake: versioned Delta tables (corpus, scores, selection) read and written with Delta Lake's Spark
engine (delta-spark; on Databricks the runtime's Delta).

Every write is one Delta commit whose ``userMetadata`` records the job, its resolved config and the code
version (``DESCRIBE HISTORY`` shows it). Keyed tables grow with ``MERGE ... WHEN NOT MATCHED THEN INSERT``
on their key (``insert_new_rows``), so writers that all insert this way never write a key twice, however many
run at once (on S3 with several drivers, with Delta's DynamoDB log store); appends can be idempotent with
Delta's app transactions. Reads pin a version with ``versionAsOf``. Table paths are URIs.

Example::

    from vig_udf.lake import insert_new_rows, read_table, register_views, table_history

    commit = insert_new_rows(scores_df, "lake/scores", keys=["sample_id", "scorer_id"], job="score",
                             config={"model": "demo"})
    previous = read_table(spark, "lake/scores", version=commit.version - 1)
    register_views(spark, "lake")  # SELECT ... FROM scores JOIN corpus USING (sample_id)
"""

from vig_udf.lake.maintenance import optimize_lake, vacuum_lake
from vig_udf.lake.paths import lake_table, staging_folder, table_uri
from vig_udf.lake.read import read_table, table_commit, table_exists, table_history, table_version
from vig_udf.lake.readonly import ReadOnlyError, check_read_only
from vig_udf.lake.views import lake_tables, register_views
from vig_udf.lake.write import Commit, ConcurrentWriteError, insert_new_rows, write_table

__all__ = [
    "Commit",
    "ConcurrentWriteError",
    "ReadOnlyError",
    "check_read_only",
    "insert_new_rows",
    "lake_table",
    "lake_tables",
    "optimize_lake",
    "read_table",
    "register_views",
    "staging_folder",
    "table_commit",
    "table_exists",
    "table_history",
    "table_uri",
    "table_version",
    "vacuum_lake",
    "write_table",
]
