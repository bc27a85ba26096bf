"""`vig sql` and `vig lake history` without Spark (engine=local): Delta tables read by delta-rs and queried by
DuckDB, time travel, the read-only guarantee (no file outside the lake's tables, no write), the output
formats, and the s3a settings mapped for delta-rs. The tables here are written by delta-rs; the comparison
with Spark on tables written by the jobs is in tests/test_sql_engines.py."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from typer.testing import CliRunner

from vig_udf.cli import app
from vig_udf.lake.local_sql import LocalSqlError, connect, query
from vig_udf.lake.local_tables import LakeReadError, lake_tables, storage_options, table_history
from vig_udf.lake.readonly import ReadOnlyError
from vig_udf.lake.time_travel import pinned_tables
from vig_udf.sql_output import write_result

CONVERSATIONS = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))


def corpus_rows(ids: list[str], source: str) -> pa.Table:
    return pa.table({
        "sample_id": ids,
        "source": [source] * len(ids),
        "conversations": pa.array([[{"from": "human", "value": f"q {i}"}, {"from": "gpt", "value": f"a, \"{i}\"\n"}]
                                   for i in ids], CONVERSATIONS),
        "n_turns": pa.array([1] * len(ids), pa.int32()),
        "image_bytes": pa.array([None] * (len(ids) - 1) + [b"\x00\xff"], pa.binary()),
    })


@pytest.fixture
def lake(tmp_path) -> Path:
    """corpus v0 (3 rows) and v1 (5 rows), scores with a NULL vig and float32 token arrays, a staging folder."""
    root = tmp_path / "lake"
    write_deltalake(str(root / "corpus"), corpus_rows(["a", "b", "c"], "coco"), mode="error")
    write_deltalake(str(root / "corpus"), corpus_rows(["d", "e"], "gqa"), mode="append")
    write_deltalake(str(root / "scores"), pa.table({
        "sample_id": ["a", "b", "c", "d"],
        "status": ["ok", "ok", "text_only", "ok"],
        "vig": pa.array([0.5, -0.25, None, 1e-5], pa.float64()),
        "token_vig": pa.array([[0.1, 0.2], [0.3], [], [1e-5]], pa.list_(pa.float32())),
        "n_tokens": pa.array([2, 1, 0, 1], pa.int32()),
    }), mode="error")
    (root / "_staging" / "scores" / "x").mkdir(parents=True)
    (root / "notes").mkdir()  # a folder that is not a table
    return root


def rows(root, statement: str) -> list[dict]:
    return query(root, statement).read_all().to_pylist()


def test_tables_by_name_latest_and_pinned_versions(lake):
    assert lake_tables(lake) == ["corpus", "scores"]
    assert rows(lake, "SELECT count(*) AS n FROM corpus") == [{"n": 5}]
    assert rows(lake, "SELECT count(*) AS n FROM corpus@v0") == [{"n": 3}]
    # two versions of one table in one statement
    assert rows(lake, "SELECT sample_id FROM corpus EXCEPT SELECT sample_id FROM corpus@v0 ORDER BY 1") == [
        {"sample_id": "d"}, {"sample_id": "e"}]
    joined = rows(lake, "SELECT c.source, avg(s.vig) AS vig FROM scores s JOIN corpus c USING (sample_id) "
                        "WHERE s.status = 'ok' GROUP BY c.source ORDER BY 1")
    assert joined == [{"source": "coco", "vig": 0.125}, {"source": "gqa", "vig": 1e-5}]
    # Spark's NULL order: first ascending, last descending
    assert [r["vig"] for r in rows(lake, "SELECT vig FROM scores ORDER BY vig")][0] is None
    assert [r["vig"] for r in rows(lake, "SELECT vig FROM scores ORDER BY vig DESC")][-1] is None
    # a time-travel name inside a literal is text
    assert rows(lake, "SELECT 'corpus@v0' AS t FROM corpus@v0 LIMIT 1") == [{"t": "corpus@v0"}]


def test_versions_and_tables_that_do_not_exist_are_one_line_errors(lake, tmp_path):
    with pytest.raises(LakeReadError, match="versions 0 to 1; there is no version 7"):
        query(lake, "SELECT * FROM corpus@v7")
    with pytest.raises(LocalSqlError, match=r"no table selection .*tables: \['corpus', 'scores'\]"):
        query(lake, "SELECT * FROM selection@v0")
    with pytest.raises(LocalSqlError, match="selection"):
        query(lake, "SELECT * FROM selection")
    with pytest.raises(LakeReadError, match="No Delta table"):
        table_history(tmp_path / "nowhere" / "corpus")


@pytest.mark.parametrize("statement", [
    "SELECT * FROM read_parquet('{outside}')",
    "SELECT * FROM '{outside}'",
    "SELECT * FROM read_csv('/etc/passwd', sep = ':')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_json_auto('/etc/os-release')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_parquet('{inside}')",  # a data file of the lake, but not through its table
    "SELECT * FROM parquet_scan('{inside}')",
])
def test_no_file_but_the_lakes_tables_can_be_read(lake, tmp_path, statement):
    outside = tmp_path / "outside.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"secret": ["s3cr3t"]}), outside)
    inside = next((lake / "corpus").glob("*.parquet"))
    with pytest.raises(LocalSqlError, match="only the lake's tables .* can be read"):
        rows(lake, statement.format(outside=outside, inside=inside))
    result = CliRunner().invoke(app, ["sql", statement.format(outside=outside, inside=inside), f"lake={lake}"])
    assert result.exit_code == 2 and "only the lake's tables" in result.output and "s3cr3t" not in result.output


@pytest.mark.parametrize("statement", [
    "CREATE TABLE copy AS SELECT * FROM corpus",
    "INSERT INTO corpus SELECT * FROM corpus",
    "DELETE FROM corpus",
    "UPDATE scores SET vig = 0",
    "DROP VIEW corpus",
    "COPY corpus TO '{lake}/corpus/extra.parquet' (FORMAT parquet)",
    "ATTACH '{lake}/db.duckdb' AS db",
    "EXPORT DATABASE '{lake}/export'",
    "INSTALL httpfs",
    "SET enable_external_access = true",
    "PRAGMA enable_profiling",
    "CALL pragma_version()",
    "SELECT 1; SELECT 2",
    # hidden from the text check by a comment DuckDB does not have; DuckDB's parser sees the COPY
    "WITH x AS (SELECT 1) SELECT * FROM x; COPY corpus TO '{lake}/x.csv'",
])
def test_statements_that_write_are_refused_and_the_lake_stays(lake, statement):
    before = sorted(str(p.relative_to(lake)) for p in lake.rglob("*"))
    with pytest.raises(ReadOnlyError):
        query(lake, statement.format(lake=lake))
    result = CliRunner().invoke(app, ["sql", statement.format(lake=lake), f"lake={lake}"])
    assert result.exit_code == 2 and "read-only statements" in result.output
    assert sorted(str(p.relative_to(lake)) for p in lake.rglob("*")) == before
    assert DeltaTable(str(lake / "corpus")).version() == 1


def test_the_connection_itself_can_neither_write_nor_be_unlocked(lake, tmp_path):
    """Below the statement checks: the DuckDB connection the local engine runs on."""
    import duckdb

    connection = connect({"corpus": DeltaTable(str(lake / "corpus")).to_pyarrow_dataset()})
    for statement in (f"COPY corpus TO '{tmp_path / 'out.csv'}'", f"ATTACH '{tmp_path / 'x.db'}'",
                      f"SELECT * FROM read_csv('{tmp_path / 'out.csv'}')"):
        with pytest.raises(duckdb.PermissionException):
            connection.execute(statement)
    for setting in ("enable_external_access = true", "python_enable_replacements = true",
                    "lock_configuration = false"):
        with pytest.raises(duckdb.Error, match="locked"):
            connection.execute(f"SET {setting}")
    local_name = pa.table({"x": [1]})  # noqa: F841 - a Python variable the query must not see
    with pytest.raises(duckdb.CatalogException):
        connection.execute("SELECT * FROM local_name")
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "x.db").exists()


def test_inspection_statements_run(lake):
    assert {r["name"] for r in rows(lake, "SHOW TABLES")} == {"corpus", "scores"}
    assert [r["column_name"] for r in rows(lake, "DESCRIBE scores")][:3] == ["sample_id", "status", "vig"]
    assert rows(lake, "EXPLAIN SELECT count(*) FROM scores")
    assert rows(lake, "VALUES (1)") and rows(lake, "FROM corpus@v0 SELECT count(*) AS n") == [{"n": 3}]


def test_csv_and_json_parse_back_to_the_rows(lake):
    statement = "SELECT * FROM corpus c LEFT JOIN scores s USING (sample_id) ORDER BY sample_id"
    expected = query(lake, statement).read_all()
    runner = CliRunner()
    as_json = runner.invoke(app, ["sql", statement, f"lake={lake}", "--format", "json"])
    as_csv = runner.invoke(app, ["sql", statement, f"lake={lake}", "--format", "csv"])
    assert as_json.exit_code == 0 and as_csv.exit_code == 0, (as_json.output, as_csv.output)
    assert as_json.stderr == as_csv.stderr == ""  # stdout holds the result alone
    types = {field.name: field.type for field in expected.schema}

    def same(value, original, arrow_type):
        if original is None:
            return value in (None, "")
        if pa.types.is_list(arrow_type):
            return len(value) == len(original) and all(same(v, o, arrow_type.value_type)
                                                       for v, o in zip(value, original))
        if pa.types.is_struct(arrow_type):
            return all(same(value[f.name], original[f.name], f.type) for f in arrow_type)
        if pa.types.is_float32(arrow_type):
            return np.float32(float(value)) == np.float32(original)
        if pa.types.is_floating(arrow_type):
            return float(value) == original
        if pa.types.is_integer(arrow_type):
            return int(value) == original
        if pa.types.is_binary(arrow_type):
            import base64

            return base64.b64decode(value) == original
        return value == original

    parsed_json = json.loads(as_json.stdout)
    parsed_csv = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(parsed_json) == len(parsed_csv) == expected.num_rows == 5
    for got_json, got_csv, original in zip(parsed_json, parsed_csv, expected.to_pylist()):
        assert list(got_json) == list(got_csv) == list(original)
        for name, value in original.items():
            nested = pa.types.is_list(types[name]) or pa.types.is_struct(types[name])
            from_csv = json.loads(got_csv[name]) if nested and got_csv[name] else got_csv[name]
            assert same(got_json[name], value, types[name]), (name, got_json[name], value)
            assert same(from_csv, value, types[name]), (name, got_csv[name], value)


def test_table_output_is_sparks_show_layout_and_the_limit_is_said(lake):
    result = CliRunner().invoke(app, ["sql", "SELECT sample_id, vig, token_vig FROM scores ORDER BY sample_id",
                                      f"lake={lake}", "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "+---------+-----+----------+\n"
        "|sample_id|vig  |token_vig |\n"
        "+---------+-----+----------+\n"
        "|a        |0.5  |[0.1, 0.2]|\n"
        "|b        |-0.25|[0.3]     |\n"
        "|c        |NULL |[]        |\n"
        "+---------+-----+----------+\n"
        "only showing top 3 rows\n")
    csv_cut = CliRunner().invoke(app, ["sql", "SELECT sample_id FROM scores", f"lake={lake}", "--limit", "2",
                                       "--format", "csv"])
    assert csv_cut.stdout.count("\n") == 3 and "only the first 2 rows" in csv_cut.stderr


def test_java_notation_and_nested_values_in_the_table():
    schema = pa.schema([("d", pa.float64()), ("f", pa.float32()), ("m", pa.map_(pa.string(), pa.int32())),
                        ("b", pa.binary()), ("n", pa.decimal128(38, 0))])
    batch = pa.record_batch([pa.array([1e-5, 1e7, float("nan")]), pa.array([0.1, 3.0, None], pa.float32()),
                             pa.array([[("k", 1)], [], None], schema.field("m").type),
                             pa.array([b"\x0a\xff", b"", None]), pa.array([24, None, -3], pa.decimal128(38, 0))],
                            schema=schema)
    out = io.StringIO()
    assert write_result(schema, [batch], "table", out, limit=10, note=print) == 3
    assert out.getvalue().splitlines()[3:6] == ["|1.0E-5|0.1 |{k -> 1}|[0A FF]|24  |",
                                                "|1.0E7 |3.0 |{}      |[]     |NULL|",
                                                "|NaN   |NULL|NULL    |NULL   |-3  |"]
    out = io.StringIO()
    write_result(schema, [batch], "json", out, limit=10, note=print)
    parsed = json.loads(out.getvalue())
    assert parsed[0] == {"d": 1e-5, "f": 0.1, "m": {"k": 1}, "b": "Cv8=", "n": 24} and parsed[2]["d"] == "NaN"
    with pytest.raises(ValueError, match="distinct column names"):
        write_result(pa.schema([("a", pa.int64()), ("a", pa.int64())]), [], "json", io.StringIO(), limit=1, note=print)


def test_bad_format_and_bad_settings_are_one_line_errors(lake):
    runner = CliRunner()
    bad_format = runner.invoke(app, ["sql", "SELECT 1", f"lake={lake}", "--format", "xml"])
    assert bad_format.exit_code == 2 and "--format must be one of table, csv, json" in bad_format.output
    bad_engine = runner.invoke(app, ["sql", "SELECT 1", f"lake={lake}", "engine=duck"])
    assert bad_engine.exit_code == 2 and "engine" in bad_engine.output and "Traceback" not in bad_engine.output
    bad_sql = runner.invoke(app, ["sql", "SELECT nope FROM corpus", f"lake={lake}"])
    assert bad_sql.exit_code == 2 and "nope" in bad_sql.output and "Traceback" not in bad_sql.output


def test_lake_history_reads_the_log_without_spark(lake):
    history = table_history(lake / "corpus")
    assert [c["version"] for c in history] == [1, 0]
    assert [c["operation"] for c in history] == ["WRITE", "WRITE"]
    assert history[0]["metrics"]["num_added_rows"] == 2
    result = CliRunner().invoke(app, ["lake", "history", "corpus", f"lake={lake}", "--limit", "1"])
    assert result.exit_code == 0 and result.output.startswith("v1  ") and result.output.count("\n") == 1
    missing = CliRunner().invoke(app, ["lake", "history", "nope", f"lake={lake}"])
    assert missing.exit_code == 2 and "No Delta table" in missing.output


def test_time_travel_names_are_rewritten_outside_literals_and_comments():
    statement = "SELECT 'x@v1', \"q@v2\" FROM scores@v3 s JOIN corpus@v12 USING (id) -- t@v4\nWHERE a.b@v5 = 1"
    rewritten, views = pinned_tables(statement, quote="`")
    assert rewritten == ("SELECT 'x@v1', \"q@v2\" FROM `scores@v3` s JOIN `corpus@v12` USING (id) -- t@v4\n"
                         "WHERE a.b@v5 = 1")
    assert views == {"scores@v3": ("scores", 3), "corpus@v12": ("corpus", 12)}


def test_s3a_settings_become_delta_rs_storage_options():
    conf = {
        "spark.hadoop.fs.s3a.endpoint": "127.0.0.1:9000",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.access.key": "AK",
        "spark.hadoop.fs.s3a.secret.key": "SK",
        "spark.hadoop.fs.s3a.endpoint.region": "eu-west-1",
        "spark.hadoop.fs.s3a.bucket.other.endpoint": "https://s3.other.example",
        "spark.sql.shuffle.partitions": "4",
    }
    assert storage_options("s3a://data/lake", conf) == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK", "AWS_REGION": "eu-west-1", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false"}
    other = storage_options("s3a://other/lake", conf)  # a bucket's own settings win
    assert other["AWS_ENDPOINT_URL"] == "https://s3.other.example" and "AWS_ALLOW_HTTP" not in other
    assert storage_options("/local/lake", conf) == {} and storage_options("s3a://b/l", {}) == {}


def test_auto_engine_is_local_unless_spark_is_needed(monkeypatch):
    from vig_udf.cli import _read_engine
    from vig_udf.config import SparkConfig

    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    assert _read_engine("auto", "lake", SparkConfig()) == "local"
    assert _read_engine("auto", "s3a://b/lake", SparkConfig()) == "local"
    assert _read_engine("auto", "abfss://c@a.dfs.core.windows.net/lake", SparkConfig()) == "spark"
    assert _read_engine("auto", "dbfs:/mnt/lake", SparkConfig()) == "spark"
    assert _read_engine("spark", "lake", SparkConfig()) == "spark"
    monkeypatch.setenv("SPARK_REMOTE", "sc://host:15002")
    assert _read_engine("auto", "lake", SparkConfig()) == "spark"
    assert _read_engine("local", "lake", SparkConfig()) == "local"
