"""The lake on the delta-rs backend, through a real local Spark: exact round trips, commit metadata,
time travel, idempotent reruns, overwrite, create-only, failed jobs, partitions, views."""

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
from vig_udf.lake import read_table, register_views, table_exists, table_history, table_version, write_table
from vig_udf.lake.schema import table_schema

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
    return {os.path.abspath(p) for p in glob.glob(f"{path}/**/*.parquet", recursive=True)}


def frame(spark, ids, value=0):
    return spark.createDataFrame([(i, value) for i in ids], "sample_id string, value int")


def test_round_trip_keeps_every_type_and_null(spark, tmp_path):
    df = spark.createDataFrame(ROWS, SCHEMA)  # two partitions: two tasks, two files
    path = tmp_path / "scores"

    version = write_table(df, path, job="test", config={"k": 1})

    assert version == 0 and table_exists(path) and table_version(path) == 0
    back = read_table(spark, path)
    assert back.schema == table_schema(SCHEMA)  # same types, every field nullable
    assert_rows_equal(rows_of(back), rows_of(df))
    # delta-rs reads what the Spark tasks wrote, value for value
    delta_rs_rows = DeltaTable(str(path)).to_pyarrow_table().sort_by("sample_id").to_pylist()
    assert repr(delta_rs_rows) == repr(df.toArrow().sort_by("sample_id").to_pylist())
    assert data_files(path) == set(DeltaTable(str(path)).file_uris()) and len(data_files(path)) == 2


def test_commit_metadata_time_travel_and_append_by_name(spark, tmp_path):
    path = tmp_path / "t"
    write_table(frame(spark, ["a", "b"], 1), path, job="ingest", config={"source": "x.json", "limit": 2})
    later = frame(spark, ["c"], 2).select("value", "sample_id")  # columns in another order
    version = write_table(later, path, job="score", config={"model": "demo", "p": [0.5, 0.9]})

    assert version == 1
    newest, oldest = table_history(path)
    assert (newest["version"], newest["job"], newest["config"]) == (1, "score", {"model": "demo", "p": [0.5, 0.9]})
    assert (oldest["version"], oldest["job"], oldest["config"]) == (0, "ingest", {"source": "x.json", "limit": 2})
    assert newest["code_version"].startswith(vig_udf.__version__)
    assert isinstance(newest["timestamp"], dt.datetime) and newest["operation"] == "WRITE"
    assert [r.sample_id for r in rows_of(read_table(spark, path, version=0))] == ["a", "b"]
    assert [tuple(r) for r in rows_of(read_table(spark, path))] == [("a", 1), ("b", 1), ("c", 2)]
    with pytest.raises(ValueError, match="versions 0 to 1"):
        read_table(spark, path, version=5)
    with pytest.raises(ValueError, match="changed types"):
        write_table(frame(spark, ["d"]).selectExpr("sample_id", "'x' AS value"), path, job="bad", config={})
    assert table_version(path) == 1


def test_idempotent_rerun_adds_no_commit_and_no_files(spark, tmp_path):
    path = tmp_path / "t"
    df = frame(spark, ["a", "b", "c"])
    assert write_table(df, path, job="j", config={}, app_id="score/abc", app_version=1) == 0
    files = data_files(path)

    assert write_table(df, path, job="j", config={}, app_id="score/abc", app_version=1) is None

    assert table_version(path) == 0 and data_files(path) == files
    assert len(table_history(path)) == 1 and table_history(path)[0]["app_id"] == "score/abc"
    assert write_table(df, path, job="j", config={}, app_id="score/abc", app_version=2) == 1
    assert DeltaTable(str(path)).transaction_version("score/abc") == 2


def test_overwrite_removes_previous_files_in_the_same_commit(spark, tmp_path):
    path = tmp_path / "t"
    write_table(frame(spark, ["a", "b"], 1), path, job="j", config={})
    old_files = set(DeltaTable(str(path)).file_uris())
    new = spark.createDataFrame([("z", 0.5)], "sample_id string, score double")  # a new schema too

    assert write_table(new, path, mode="overwrite", job="j", config={}) == 1

    assert [tuple(r) for r in rows_of(read_table(spark, path))] == [("z", 0.5)]
    with open(path / "_delta_log" / f"{1:020d}.json") as log:
        actions = [json.loads(line) for line in log]
    removed = {str(path / a["remove"]["path"]) for a in actions if "remove" in a}
    assert removed == old_files and not old_files & set(DeltaTable(str(path)).file_uris())
    assert [tuple(r) for r in rows_of(read_table(spark, path, version=0))] == [("a", 1), ("b", 1)]


def test_mode_error_creates_once(spark, tmp_path):
    path = tmp_path / "t"
    assert write_table(frame(spark, ["a"]), path, mode="error", job="j", config={}) == 0
    with pytest.raises(FileExistsError, match="already exists"):
        write_table(frame(spark, ["b"]), path, mode="error", job="j", config={})
    assert table_version(path) == 0 and [r.sample_id for r in rows_of(read_table(spark, path))] == ["a"]


def test_failed_job_leaves_no_commit_and_no_stray_files(spark, tmp_path):
    def fail_in_one_partition(batches):  # nested: pickled by value, workers need not import this module
        for batch in batches:
            yield batch
            if batch.column("id")[0].as_py() >= 100:  # the second of two partitions
                raise RuntimeError("scorer crashed")

    path = tmp_path / "t"
    write_table(spark.range(5), path, job="j", config={})
    files = data_files(path)
    failing = spark.range(0, 200, 1, 2).mapInArrow(fail_in_one_partition, "id long")

    with pytest.raises(Exception, match="scorer crashed"):
        write_table(failing, path, job="j", config={}, app_id="a", app_version=1)

    assert table_version(path) == 0
    assert data_files(path) == files == set(DeltaTable(str(path)).file_uris())
    assert DeltaTable(str(path)).transaction_version("a") is None


def test_partitioned_table_and_empty_table(spark, tmp_path):
    path = tmp_path / "p"
    df = spark.createDataFrame(
        [("a", "train", 1), ("b", "val/x y", 2), ("c", None, 3), ("d", "train", 4)],
        "sample_id string, split string, v int",
    )
    assert write_table(df, path, job="j", config={}, partition_by="split") == 0
    assert DeltaTable(str(path)).metadata().partition_columns == ["split"]
    assert (path / "split=train").is_dir() and (path / "split=__HIVE_DEFAULT_PARTITION__").is_dir()
    assert_rows_equal(rows_of(read_table(spark, path)), rows_of(df))
    assert DeltaTable(str(path)).to_pyarrow_table().sort_by("sample_id").to_pylist() == [
        r.asDict() for r in rows_of(df)
    ]
    write_table(df.limit(1), path, job="j", config={})  # appends keep the table's partitioning
    assert read_table(spark, path).count() == 5
    with pytest.raises(ValueError, match="cannot change"):
        write_table(df, path, mode="overwrite", job="j", config={}, partition_by="v")

    empty = tmp_path / "empty"
    assert write_table(spark.createDataFrame([], SCHEMA), empty, job="j", config={}) == 0
    back = read_table(spark, empty)
    assert back.schema == table_schema(SCHEMA) and back.count() == 0


def test_views_join_and_pinned_versions(spark, tmp_path):
    corpus = spark.createDataFrame([("a", "coco"), ("b", "vg"), ("c", "coco")], "sample_id string, source string")
    scores = spark.createDataFrame([("a", 0.5), ("b", 1.5)], "sample_id string, vig double")
    write_table(corpus, tmp_path / "corpus", job="ingest", config={})
    write_table(scores, tmp_path / "scores", job="score", config={})
    write_table(
        scores.limit(1).selectExpr("'c' AS sample_id", "CAST(2.0 AS DOUBLE) AS vig"),
        tmp_path / "scores",
        job="score",
        config={},
    )
    (tmp_path / "not_a_table").mkdir()

    assert register_views(spark, tmp_path) == {"corpus": 0, "scores": 1}
    query = "SELECT source, sum(vig) AS vig FROM scores JOIN corpus USING (sample_id) GROUP BY source ORDER BY source"
    assert [tuple(r) for r in spark.sql(query).collect()] == [("coco", 2.5), ("vg", 1.5)]

    assert register_views(spark, tmp_path, ["scores", "corpus"], versions={"scores": 0}) == {"scores": 0, "corpus": 0}
    assert [tuple(r) for r in spark.sql(query).collect()] == [("coco", 0.5), ("vg", 1.5)]
    with pytest.raises(FileNotFoundError, match="selection"):
        register_views(spark, tmp_path, ["selection"])
