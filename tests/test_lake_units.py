"""The lake's pieces without a Spark session: file statistics, task files, commit and abort, schemas,
metadata and the backend choice."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from pyspark.sql.types import (
    ArrayType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
)

from vig_udf.lake.backend import BACKEND_ENV, resolve_backend
from vig_udf.lake.commit import WriteSpec, abort_write, commit_write
from vig_udf.lake.files import files_of_write, write_task_files
from vig_udf.lake.metadata import commit_metadata, history_entry
from vig_udf.lake.schema import as_nullable, check_append, partition_folder, partition_value
from vig_udf.lake.stats import FileStats

SCHEMA = pa.schema([("id", pa.int64()), ("split", pa.string()), ("x", pa.float32()), ("ids", pa.list_(pa.int32()))])
SPARK_SCHEMA = StructType(
    [StructField("id", LongType()), StructField("split", StringType()), StructField("x", FloatType()),
     StructField("ids", ArrayType(IntegerType()))]
)  # fmt: skip


def batch(ids, splits, xs) -> pa.RecordBatch:
    return pa.record_batch([ids, splits, pa.array(xs, pa.float32()), [[i] for i in ids]], schema=SCHEMA)


def test_file_stats_are_exact_or_absent():
    schema = pa.schema(
        [
            ("i", pa.int32()),
            ("f", pa.float64()),
            ("nan", pa.float64()),
            ("s", pa.string()),
            ("long", pa.string()),
            ("b", pa.bool_()),
            ("bin", pa.binary()),
            ("l", pa.list_(pa.int8())),
        ]
    )
    stats = FileStats(schema)
    stats.update(
        pa.record_batch(
            [
                [3, None],
                [1.5, -2.0],
                [1.0, math.nan],
                ["b", None],
                ["z" * 33, "y"],
                [True, None],
                [b"\x00", None],
                [[1], None],
            ],
            schema=schema,
        )
    )
    stats.update(
        pa.record_batch(
            [[-4, 7], [None, None], [0.0, 2.0], ["a", "c"], ["b", "a"], [False, False], [None, None], [None, []]],
            schema=schema,
        )
    )
    assert json.loads(stats.to_json()) == {
        "numRecords": 4,
        "minValues": {"i": -4, "f": -2.0, "s": "a"},
        "maxValues": {"i": 7, "f": 1.5, "s": "c"},
        "nullCount": {"i": 1, "f": 2, "nan": 0, "s": 1, "long": 0, "b": 1, "bin": 3},
    }


def test_task_files_commit_and_abort(tmp_path):
    uri = str(tmp_path / "t")
    files = write_task_files(
        iter([batch([1, 2], ["train", None], [0.5, 1.0]), batch([3], ["train"], [2.0])]),
        uri=uri, write_id="w1", schema=SCHEMA, partition_by=["split"],
    )  # fmt: skip
    assert sorted((f.path.split("/")[0], f.num_records, f.partition_values["split"]) for f in files) == [
        ("split=__HIVE_DEFAULT_PARTITION__", 1, None),
        ("split=train", 2, "train"),
    ]
    spec = WriteSpec(uri=uri, mode="append", write_id="w1", schema=SPARK_SCHEMA.json(), partition_by=("split",),
                     metadata=(("job", "unit"),), app_id="app", app_version=3)  # fmt: skip
    orphan = write_task_files(
        iter([batch([9], ["x"], [0.0])]), uri=uri, write_id="w1", schema=SCHEMA, partition_by=["split"]
    )  # a task attempt whose result Spark discarded
    commit_write(spec, files)
    table = DeltaTable(uri)
    assert table.version() == 0 and table.transaction_version("app") == 3 and table.history()[0]["job"] == "unit"
    assert sorted(table.to_pyarrow_table().column("id").to_pylist()) == [1, 2, 3]
    assert sorted(files_of_write(uri, "w1")) == sorted(table.file_uris())  # the orphan is gone
    assert orphan[0].path not in {f.path for f in files}

    abort_write(spec, files)  # a commit that landed keeps its files
    assert len(files_of_write(uri, "w1")) == 2
    failed = write_task_files(iter([batch([4], ["val"], [1.0])]), uri=uri, write_id="w2", schema=SCHEMA,
                              partition_by=["split"])  # fmt: skip
    abort_write(WriteSpec(uri=uri, mode="append", write_id="w2", schema=SPARK_SCHEMA.json()), failed)
    assert files_of_write(uri, "w2") == [] and DeltaTable(uri).version() == 0


def test_task_that_fails_midway_deletes_its_file(tmp_path):
    def batches():
        yield batch([1], ["a"], [0.0])
        raise RuntimeError("upstream failed")

    with pytest.raises(RuntimeError, match="upstream failed"):
        write_task_files(batches(), uri=str(tmp_path), write_id="w", schema=SCHEMA, partition_by=[])
    assert files_of_write(str(tmp_path), "w") == []


def test_schemas_are_nullable_and_appends_match_by_name():
    nested = StructType([StructField("m", MapType(StringType(), ArrayType(DoubleType(), False), False), False)])
    assert as_nullable(nested) == StructType(
        [StructField("m", MapType(StringType(), ArrayType(DoubleType(), True), True), True)]
    )
    table = StructType([StructField("a", StringType()), StructField("b", DoubleType())])
    data = StructType([StructField("b", DoubleType(), False), StructField("a", StringType())])
    assert check_append(data, table, path="t") == ["a", "b"]
    with pytest.raises(ValueError, match=r"missing columns \['b'\], extra columns \['c'\]"):
        check_append(StructType([StructField("a", StringType()), StructField("c", DoubleType())]), table, path="t")
    assert [partition_value(v) for v in (None, "", True, 3, "x")] == [None, None, "true", "3", "x"]
    assert partition_folder(["s", "n"], ["a/b c", None]) == "s=a%2Fb%20c/n=__HIVE_DEFAULT_PARTITION__"


def test_metadata_and_history_entries():
    meta = commit_metadata(job="score", config={"b": 1, "a": [1, 2]}, write_id="w", app_id="x", app_version=2)
    assert meta["config"] == '{"a": [1, 2], "b": 1}' and meta["app_version"] == "2"
    with pytest.raises(ValueError, match="job"):
        commit_metadata(job="", config={}, write_id="w")
    with pytest.raises(TypeError, match="model_dump"):
        commit_metadata(job="j", config=["not", "a", "dict"], write_id="w")
    from_delta_rs = history_entry({"version": 3, "timestamp": 0, "operation": "WRITE", **meta})
    from_spark = history_entry({"version": 3, "timestamp": 0, "operation": "WRITE", "userMetadata": json.dumps(meta)})
    assert from_delta_rs == from_spark
    assert from_spark["config"] == {"a": [1, 2], "b": 1} and from_spark["app_version"] == 2
    assert history_entry({"version": 0, "userMetadata": "free text"})["job"] is None


class FakeSpark:
    def __init__(self, extensions=None):
        self.conf = self
        self._extensions = extensions

    def get(self, key, default=None):
        return self._extensions if key == "spark.sql.extensions" else default


def test_backend_choice(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    assert resolve_backend(FakeSpark()) == "delta-rs"
    assert resolve_backend(FakeSpark("io.delta.sql.DeltaSparkSessionExtension")) == "native"
    assert resolve_backend(FakeSpark("io.delta.sql.DeltaSparkSessionExtension"), "delta-rs") == "delta-rs"
    monkeypatch.setenv(BACKEND_ENV, "native")
    assert resolve_backend(FakeSpark()) == "native"
    assert resolve_backend(FakeSpark(), "auto") == "delta-rs"
    monkeypatch.setenv(BACKEND_ENV, "delta")
    with pytest.raises(ValueError, match=BACKEND_ENV):
        resolve_backend(FakeSpark())
    monkeypatch.delenv(BACKEND_ENV)
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    assert resolve_backend(FakeSpark()) == "native"
