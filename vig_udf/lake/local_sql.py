"""``vig sql`` without Spark: the lake's Delta tables, read by delta-rs, queried by an embedded DuckDB.

Every Delta table folder under the lake root is registered by name (``corpus``, ``scores``, ``selection``,
...) as the Arrow dataset of its latest version; ``<table>@v<n>`` in the statement adds that table at version
``n`` (:mod:`vig_udf.lake.time_travel`). DuckDB pushes the query's columns and filters into the datasets'
scans, so a query reads the Parquet columns it needs, not whole tables.

Read-only by construction, in three layers:

- the statement passes :func:`vig_udf.lake.readonly.check_read_only` (the text check ``vig sql`` applies on
  either engine), and DuckDB's own parser must see exactly one ``SELECT`` or ``EXPLAIN`` statement (``SHOW``,
  ``DESCRIBE``, ``SUMMARIZE``, ``VALUES``, ``FROM t`` and ``TABLE t`` parse as ``SELECT``);
- the database is an empty in-memory one with external access off (``enable_external_access=false``):
  DuckDB itself can neither read nor write a file or URL (``read_parquet``, ``read_csv``, ``read_text``,
  ``glob``, ``COPY``, ``ATTACH``, ``EXPORT DATABASE``, ``INSTALL`` / ``LOAD`` all fail), nor look up Python
  variables by name (``python_enable_replacements=false``); the configuration is then locked
  (``lock_configuration=true``), so no ``SET`` turns any of it back on;
- the only data it reaches are the registered datasets, which delta-rs and Arrow scan read-only.

Semantics are set to Spark's where the two differ by a setting: ``ORDER BY`` puts NULLs first ascending and
last descending. The dialect is DuckDB's, which runs the README's queries as written; Spark-only statements
(``DESCRIBE HISTORY``, ``delta.`path``` tables) need ``engine=spark``.
"""

from __future__ import annotations

import re

from vig_udf.errors import InputError
from vig_udf.lake.local_tables import lake_tables, open_table
from vig_udf.lake.paths import table_uri
from vig_udf.lake.readonly import HOW_TO_WRITE, READ_ONLY, ReadOnlyError, check_read_only
from vig_udf.lake.time_travel import pinned_tables

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# DuckDB settings of every local query connection; lock_configuration last, once the others are in place
SETTINGS = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "python_enable_replacements": False,
    "default_null_order": "nulls_first_on_asc_last_on_desc",  # Spark's NULL order
}
READ_STATEMENTS = ("SELECT", "EXPLAIN")


class LocalSqlError(InputError):
    """A statement DuckDB cannot run on the lake (a syntax error, an unknown table or column), one line."""


def check_local_statement(statement: str) -> None:
    """Raise :class:`ReadOnlyError` unless DuckDB's parser sees exactly one read-only statement."""
    import duckdb

    message = HOW_TO_WRITE.format(allowed=", ".join(READ_ONLY[:6]))
    try:
        statements = duckdb.extract_statements(statement)
    except duckdb.Error as error:
        raise LocalSqlError(_one_line(error)) from None
    if len(statements) != 1:
        raise ReadOnlyError(f"One statement per call, please. {message}")
    kind = statements[0].type.name
    if kind not in READ_STATEMENTS:
        raise ReadOnlyError(f"Refused a statement DuckDB parses as {kind}: {message}")


def connect(tables: dict[str, object]):
    """A locked, read-only DuckDB connection on which each of ``tables`` (view name -> Arrow dataset) is a
    view; nothing else is readable."""
    import duckdb

    connection = duckdb.connect(":memory:", config=dict(SETTINGS))
    for name, dataset in tables.items():
        connection.register(name, dataset)
    connection.execute("SET lock_configuration = true")
    return connection


def query(root, statement: str, *, spark_conf: dict[str, str] | None = None):
    """Run the read-only ``statement`` over the lake at ``root``; returns a ``pyarrow.RecordBatchReader`` of the
    result, read batch by batch as it is consumed.

    Raises :class:`ReadOnlyError` for a statement that is not one read-only query, :class:`LocalSqlError` for
    one DuckDB cannot run, and :class:`vig_udf.lake.local_tables.LakeReadError` for a pinned version that does
    not exist. Example::

        reader = query("lake", "SELECT status, count(*) AS n FROM scores@v2 GROUP BY status")
        reader.read_all().to_pylist()
    """
    import duckdb

    check_read_only(statement)
    rewritten, pinned = pinned_tables(statement, quote='"')
    check_local_statement(rewritten)
    uri = table_uri(root)
    names = [name for name in lake_tables(uri, spark_conf=spark_conf) if _NAME.match(name)]
    missing = sorted({name for name, _ in pinned.values()} - set(names))
    if missing:
        raise LocalSqlError(f"no table {', '.join(missing)} under {uri} to read a version of; tables: {names}")
    views = {name: (name, None) for name in names} | pinned
    datasets = {view: open_table(f"{uri}/{name}", version=version, spark_conf=spark_conf).to_pyarrow_dataset()
                for view, (name, version) in views.items()}
    connection = connect(datasets)
    try:
        result = connection.sql(rewritten).to_arrow_reader()
    except duckdb.Error as error:
        raise LocalSqlError(_explained(error, names)) from None

    def batches():  # holds the connection until the last batch is read
        try:
            yield from result
        except duckdb.Error as error:
            raise LocalSqlError(_explained(error, names)) from None
        finally:
            connection.close()

    import pyarrow as pa

    return pa.RecordBatchReader.from_batches(result.schema, batches())


def _explained(error: Exception, tables: list[str]) -> str:
    import duckdb

    if isinstance(error, duckdb.PermissionException):
        return f"only the lake's tables ({', '.join(tables)}) can be read, no other file: {_one_line(error)}"
    return _one_line(error)


def _one_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(error).__name__
