"""The lake on Delta Lake's Spark engine, through a real local Spark: exact round trips (also read by
delta-rs), commit metadata, time travel, idempotent appends, keyed inserts, overwrite, create-only, failed
jobs and VACUUM, views, maintenance."""

from __future__ import annotations

import datetime as dt
import glob
import json
import os

import pytest
from deltalake import DeltaTable
from pyspark.sql import Row
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

import vig_udf
from vig_udf.lake import (
    insert_new_rows,
    lake_tables,
    optimize_lake,
    read_table,
    register_views,
    table_commit,
    table_exists,
    table_history,
    table_version,
    vacuum_lake,
    write_table,
)
from vig_udf.lake.schema import as_nullable

pytestmark = pytest.mark.spark

SPAN = StructType(
    [StructField("start", IntegerType()), StructField("end", IntegerType()), StructField("label", StringType())]
)
SCHEMA = StructType(
    [
        StructField("sample_id", StringType(), False),
        StructField("n_tokens", IntegerType()),
        StructField("seen", LongType()),
        StructField("vig", FloatType()),
        StructField("nll", DoubleType()),
        StructField("ok", BooleanType()),
        StructField("token_ids", ArrayType(IntegerType())),
        StructField("token_vig", ArrayType(FloatType())),
        StructField("spans", ArrayType(SPAN)),
        StructField("meta", StructType([StructField("source", StringType()), StructField("width", IntegerType())])),
        StructField("image", BinaryType()),
        StructField("created", TimestampType()),
    ]
)
T0 = dt.datetime(2024, 5, 1, 12, 30, 15, 123456)  # naive = UTC (the session time zone)
# fmt: off
ROWS = [
    ("a", 3, 10**12, 0.5, 1.25, True, [1, 2, 3], [0.25, -1.5, 2.0], [(0, 2, "x"), (2, 3, None)], ("coco", 640),
     b"\x89PNG\x00\xff", T0),
    ("b", 0, -7, float("-inf"), float("nan"), False, [], [], [], ("vg", None), b"", T0 + dt.timedelta(days=1)),
    ("c", None, None, None, None, None, None, None, None, None, None, None),
    ("d", 1, 0, 1.0, 0.0, True, [None, 5], [None, 0.125], [None, (1, None, "y")], (None, 32), None, T0),
]
# fmt: on


def rows_of(df) -> list[Row]:
    """Rows sorted by sample_id (NaN-safe comparison happens through repr)."""
    return sorted(df.collect(), key=lambda r: r["sample_id"])


def assert_rows_equal(actual: list[Row], expected: list[Row]) -> None:
    # repr compares NaN equal to NaN and keeps every field, nested ones included
    assert [repr(r) for r in actual] == [repr(r) for r in expected]


def data_files(path) -> set[str]:
    """Every Parquet file in the table folder, referenced or not."""
    return {os.path.abspath(p) for p in glob.glob(f"{path}/**/*.parquet", recursive=True)}


def referenced_files(spark, path) -> set[str]:
    """The data files that the table's latest version is made of."""
    return {f.removeprefix("file://").removeprefix("file:") for f in read_table(spark, path).inputFiles()}


def frame(spark, ids, value=0):
    return spark.createDataFrame([(i, value) for i in ids], "sample_id string, value int")


def test_round_trip_keeps_every_type_and_null(spark, tmp_path):
    df = spark.createDataFrame(ROWS, SCHEMA)
    path = tmp_path / "scores"

    commit = write_table(df, path, job="test", config={"k": 1})

    assert (commit.version, commit.rows_added) == (0, 4) and table_exists(spark, path)
    assert table_version(spark, path) == 0
    back = read_table(spark, path)
    assert back.schema == as_nullable(SCHEMA)  # same types, every field nullable
    assert_rows_equal(rows_of(back), rows_of(df))
    # a table written by the product is read by delta-rs with the same rows
    delta_rs_rows = DeltaTable(str(path)).to_pyarrow_table().sort_by("sample_id").to_pylist()
    assert repr(delta_rs_rows) == repr(df.toArrow().sort_by("sample_id").to_pylist())


def test_commit_metadata_time_travel_and_append_by_name(spark, tmp_path):
    path = tmp_path / "t"
    write_table(frame(spark, ["a", "b"], 1), path, job="ingest", config={"source": "x.json", "limit": 2})
    later = frame(spark, ["c"], 2).select("value", "sample_id")  # columns in another order
    commit = write_table(later, path, job="score", config={"model": "demo", "p": [0.5, 0.9]})

    assert commit.version == 1
    newest, oldest = table_history(spark, path)
    assert (newest["version"], newest["job"], newest["config"]) == (1, "score", {"model": "demo", "p": [0.5, 0.9]})
    assert (oldest["version"], oldest["job"], oldest["config"]) == (0, "ingest", {"source": "x.json", "limit": 2})
    assert newest["code_version"].startswith(vig_udf.__version__)
    assert isinstance(newest["timestamp"], dt.datetime) and newest["operation"] == "WRITE"
    # DESCRIBE HISTORY shows the same record
    described = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").orderBy("version").collect()
    assert json.loads(described[1]["userMetadata"])["job"] == "score"
    assert [r.sample_id for r in rows_of(read_table(spark, path, version=0))] == ["a", "b"]
    assert [tuple(r) for r in rows_of(read_table(spark, path))] == [("a", 1), ("b", 1), ("c", 2)]
    with pytest.raises(Exception, match="version 5"):
        read_table(spark, path, version=5)
    with pytest.raises(ValueError, match="changed types"):
        write_table(frame(spark, ["d"]).selectExpr("sample_id", "'x' AS value"), path, job="bad", config={})
    with pytest.raises(FileNotFoundError, match="No Delta table"):
        read_table(spark, tmp_path / "missing")
    assert table_version(spark, path) == 1 and table_version(spark, tmp_path / "missing") is None


def test_idempotent_append_adds_no_commit_and_no_files(spark, tmp_path):
    path = tmp_path / "t"
    df = frame(spark, ["a", "b", "c"])
    assert write_table(df, path, job="j", config={}, app_id="score/abc", app_version=1).version == 0
    files = data_files(path)

    assert write_table(df, path, job="j", config={}, app_id="score/abc", app_version=1) is None

    assert table_version(spark, path) == 0 and data_files(path) == files
    assert len(table_history(spark, path)) == 1 and table_history(spark, path)[0]["app_id"] == "score/abc"
    assert write_table(df, path, job="j", config={}, app_id="score/abc", app_version=2).version == 1


def test_the_log_reads_agree_with_delta_history_and_a_missing_commit_file_falls_back(spark, tmp_path, monkeypatch):
    import vig_udf.lake.write as lake_write
    from vig_udf.lake.metadata import history_entry
    from vig_udf.lake.read import history_rows, lake_storage, log_commit

    path, keys = tmp_path / "scores", ["sample_id"]
    assert table_version(spark, path) is None
    write_table(frame(spark, ["a", "b"]), path, job="score", config={"n": 1}, app_id="score/x", app_version=0)
    insert_new_rows(frame(spark, ["b", "c"]), path, keys=keys, job="score", config={"n": 2})
    write_table(frame(spark, ["d"]), path, mode="overwrite", job="select", config={"n": 3})
    storage = lake_storage(spark)
    assert table_version(spark, path) == 2 == history_rows(spark, path, limit=1)[0]["version"]
    described = history_rows(spark, path)
    for row in described:  # each version: the same entry from the log file as from DESCRIBE HISTORY
        from_log = history_entry(log_commit(storage, path, row["version"]))
        assert {**from_log, "timestamp": None} == {**history_entry(row), "timestamp": None}
    # table_history and table_commit read the log: DESCRIBE HISTORY's entries, each at the commit's own time
    # (DESCRIBE HISTORY gives the commit file's modification time: a moment later)
    from_log = table_history(spark, path)
    assert [{**e, "timestamp": None} for e in from_log] == [{**history_entry(r), "timestamp": None} for r in described]
    for entry, row in zip(from_log, described):
        assert abs((entry["timestamp"] - row["timestamp"]).total_seconds()) < 30
    assert table_history(spark, path, limit=2) == from_log[:2]
    assert table_commit(spark, path) == from_log[0] and table_commit(spark, path, 1) == from_log[1]
    assert table_commit(spark, path, 7) is None and table_commit(spark, tmp_path / "nothing") is None
    assert log_commit(storage, path, 7) is None

    monkeypatch.setattr(lake_write, "log_commit", lambda *_: None)  # as if log clean-up removed the commit files
    merged = insert_new_rows(frame(spark, ["d", "e", "f"]), path, keys=keys, job="score", config={"n": 4})
    assert (merged.version, merged.rows_added) == (3, 2)


def test_insert_new_rows_never_writes_a_key_twice(spark, tmp_path):
    path, staging = tmp_path / "lake" / "scores", tmp_path / "lake" / "_staging" / "scores"
    first = spark.createDataFrame([("a", "s1", 1.0), ("b", "s1", 2.0)], "sample_id string, scorer_id string, vig double")
    again = spark.createDataFrame([("b", "s1", 9.0), ("b", "s2", 3.0), ("c", "s1", 4.0)],
                                  "sample_id string, scorer_id string, vig double").select("vig", "scorer_id", "sample_id")
    keys = ["sample_id", "scorer_id"]

    created = insert_new_rows(first, path, keys=keys, job="score", config={"n": 1}, staging=str(staging))
    merged = insert_new_rows(again, path, keys=keys, job="score", config={"n": 2}, staging=str(staging))
    nothing = insert_new_rows(again, path, keys=keys, job="score", config={"n": 3})

    assert (created.version, created.rows_added) == (0, 2) and (merged.version, merged.rows_added) == (1, 2)
    assert nothing is None and table_version(spark, path) == 1  # nothing new: no commit
    rows = sorted(tuple(r) for r in read_table(spark, path).select("sample_id", "scorer_id", "vig").collect())
    assert rows == [("a", "s1", 1.0), ("b", "s1", 2.0), ("b", "s2", 3.0), ("c", "s1", 4.0)]  # b/s1 kept its first value
    assert [c["operation"] for c in table_history(spark, path)] == ["MERGE", "WRITE"]
    assert table_history(spark, path)[0]["config"] == {"n": 2}
    assert not list(staging.iterdir())  # the staged rows are gone once merged
    with pytest.raises(ValueError, match="key columns"):
        insert_new_rows(first, path, keys=["nope"], job="score", config={})

    # an app transaction that is already committed is skipped before anything is merged
    more = spark.createDataFrame([("d", "s1", 5.0)], "sample_id string, scorer_id string, vig double")
    assert insert_new_rows(more, path, keys=keys, job="score", config={}, app_id="x", app_version=0).version == 2
    assert insert_new_rows(more.selectExpr("'e' AS sample_id", "scorer_id", "vig"), path, keys=keys, job="score",
                           config={}, app_id="x", app_version=0) is None
    assert read_table(spark, path).count() == 5


def test_overwrite_replaces_rows_and_schema_in_one_commit(spark, tmp_path):
    path = tmp_path / "t"
    write_table(frame(spark, ["a", "b"], 1), path, job="j", config={})
    new = spark.createDataFrame([("z", 0.5)], "sample_id string, score double")  # a new schema too

    assert write_table(new, path, mode="overwrite", job="j", config={}).version == 1

    assert [tuple(r) for r in rows_of(read_table(spark, path))] == [("z", 0.5)]
    assert [tuple(r) for r in rows_of(read_table(spark, path, version=0))] == [("a", 1), ("b", 1)]


def test_mode_error_creates_once(spark, tmp_path):
    path = tmp_path / "t"
    assert write_table(frame(spark, ["a"]), path, mode="error", job="j", config={}).version == 0
    with pytest.raises(FileExistsError, match="already exists"):
        write_table(frame(spark, ["b"]), path, mode="error", job="j", config={})
    assert table_version(spark, path) == 0 and [r.sample_id for r in rows_of(read_table(spark, path))] == ["a"]


def test_failed_job_commits_nothing_and_vacuum_clears_its_files(spark, tmp_path):
    def fail_in_one_partition(batches):  # nested: pickled by value, workers need not import this module
        for batch in batches:
            yield batch
            if batch.column("id")[0].as_py() >= 100:  # the second of two partitions
                raise RuntimeError("scorer crashed")

    lake = tmp_path / "lake"
    path = lake / "t"
    write_table(spark.range(5), path, job="j", config={})
    failing = spark.range(0, 200, 1, 2).mapInArrow(fail_in_one_partition, "id long")

    with pytest.raises(Exception, match="scorer crashed"):
        insert_new_rows(failing, path, keys=["id"], job="j", config={}, app_id="a", app_version=1)
    with pytest.raises(Exception, match="scorer crashed"):
        write_table(failing, path, job="j", config={})

    assert table_version(spark, path) == 0 and read_table(spark, path).count() == 5
    with pytest.raises(ValueError, match="retention_check"):
        vacuum_lake(spark, lake, retain_hours=0)
    result = vacuum_lake(spark, lake, retain_hours=0, retention_check=False)
    assert result["tables"] == ["t"]
    assert data_files(path) == referenced_files(spark, path)


def test_empty_table(spark, tmp_path):
    empty = tmp_path / "empty"
    assert write_table(spark.createDataFrame([], SCHEMA), empty, job="j", config={}).version == 0
    back = read_table(spark, empty)
    assert back.schema == as_nullable(SCHEMA) and back.count() == 0


def test_views_join_pinned_versions_and_maintenance(spark, tmp_path):
    corpus = spark.createDataFrame([("a", "coco"), ("b", "vg"), ("c", "coco")], "sample_id string, source string")
    scores = spark.createDataFrame([("a", 0.5), ("b", 1.5)], "sample_id string, vig double")
    write_table(corpus, tmp_path / "corpus", job="ingest", config={})
    write_table(scores, tmp_path / "scores", job="score", config={})
    write_table(scores.limit(1).selectExpr("'c' AS sample_id", "CAST(2.0 AS DOUBLE) AS vig"), tmp_path / "scores",
                job="score", config={})
    (tmp_path / "not_a_table").mkdir()
    (tmp_path / "_staging" / "scores" / "old-write").mkdir(parents=True)

    assert lake_tables(spark, tmp_path) == ["corpus", "scores"]
    assert register_views(spark, tmp_path) == {"corpus": 0, "scores": 1}
    query = "SELECT source, sum(vig) AS vig FROM scores JOIN corpus USING (sample_id) GROUP BY source ORDER BY source"
    assert [tuple(r) for r in spark.sql(query).collect()] == [("coco", 2.5), ("vg", 1.5)]

    assert register_views(spark, tmp_path, ["scores", "corpus"], versions={"scores": 0}) == {"scores": 0, "corpus": 0}
    assert [tuple(r) for r in spark.sql(query).collect()] == [("coco", 0.5), ("vg", 1.5)]
    write_table(corpus.limit(1), tmp_path / "corpus", job="ingest", config={})
    assert spark.sql("SELECT count(*) FROM corpus").first()[0] == 3  # pinned: the new commit is not seen
    with pytest.raises(FileNotFoundError, match="selection"):
        register_views(spark, tmp_path, ["selection"])

    assert optimize_lake(spark, tmp_path, ["scores"])["scores"]["numFilesRemoved"] >= 2
    assert table_history(spark, tmp_path / "scores")[0]["operation"] == "OPTIMIZE"
    assert [tuple(r) for r in spark.sql(query).collect()] == [("coco", 0.5), ("vg", 1.5)]
    removed = vacuum_lake(spark, tmp_path, retain_hours=0, retention_check=False)["staging_removed"]
    assert removed == ["scores/old-write"] and not (tmp_path / "_staging" / "scores" / "old-write").exists()
