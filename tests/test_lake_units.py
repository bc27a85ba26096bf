"""The lake's pieces without a Spark session: table URIs, schemas, commit metadata and history entries,
and the read-only gate of `vig sql`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pyspark.sql.types import ArrayType, DoubleType, MapType, StringType, StructField, StructType

from vig_udf.lake.metadata import commit_metadata, history_entry
from vig_udf.lake.paths import lake_table, staging_folder, table_uri
from vig_udf.lake.readonly import ReadOnlyError, check_read_only
from vig_udf.lake.schema import as_nullable, check_append


def test_table_paths_are_uris_and_only_bare_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for uri in ("s3a://bucket/lake", "abfss://c@acct.dfs.core.windows.net/lake", "gs://b/lake", "dbfs:/mnt/lake",
                "/Volumes/main/vig/lake"):
        assert table_uri(uri + "/") == uri
    assert table_uri("lake") == os.path.join(str(tmp_path), "lake")
    # one spelling per place: file: URIs are local paths, the /dbfs mount is dbfs:/
    assert table_uri("file:/tmp/lake/") == table_uri("file:///tmp/lake") == "/tmp/lake"
    assert table_uri("/dbfs/mnt/lake") == "dbfs:/mnt/lake"
    assert lake_table("s3a://bucket/lake/", "scores") == "s3a://bucket/lake/scores"
    assert staging_folder("s3a://bucket/lake", "scores") == "s3a://bucket/lake/_staging/scores"
    assert staging_folder("s3a://bucket/lake/scores") == "s3a://bucket/lake/_staging/scores"


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
    with pytest.raises(ValueError, match=r"changed types \['b: table double, data string'\]"):
        check_append(StructType([StructField("a", StringType()), StructField("b", StringType())]), table, path="t")


def test_metadata_and_history_entries():
    meta = commit_metadata(job="score", config={"b": 1, "a": [1, 2]}, write_id="w", app_id="x", app_version=2)
    assert meta["config"] == '{"a": [1, 2], "b": 1}' and meta["app_version"] == "2"
    with pytest.raises(ValueError, match="job"):
        commit_metadata(job="", config={}, write_id="w")
    with pytest.raises(TypeError, match="model_dump"):
        commit_metadata(job="j", config=["not", "a", "dict"], write_id="w")
    entry = history_entry({"version": 3, "timestamp": None, "operation": "MERGE", "userMetadata": json.dumps(meta),
                           "operationMetrics": {"numTargetRowsInserted": "7", "executionTimeMs": "12"}})
    assert entry["config"] == {"a": [1, 2], "b": 1} and entry["app_version"] == 2 and entry["job"] == "score"
    assert entry["metrics"] == {"numTargetRowsInserted": 7, "executionTimeMs": 12}
    assert history_entry({"version": 0, "userMetadata": "free text"})["job"] is None


@pytest.mark.parametrize("statement", [
    "SELECT * FROM scores",
    "  select s.vig FROM scores s JOIN corpus c USING (sample_id) WHERE c.source = 'coco' ORDER BY s.vig DESC;",
    "WITH t AS (SELECT * FROM scores) SELECT count(*) FROM t",
    "SELECT 'INSERT INTO x' AS text, `drop` FROM scores -- DELETE FROM scores",
    "SHOW TABLES", "DESCRIBE HISTORY delta.`/tmp/lake/scores`", "DESC scores", "EXPLAIN SELECT 1",
    "EXPLAIN INSERT INTO scores SELECT * FROM scores",  # explains, does not run
    "VALUES (1, 2)", "TABLE scores",
])
def test_read_only_statements_pass(statement):
    check_read_only(statement)


@pytest.mark.parametrize("statement", [
    "INSERT INTO scores SELECT * FROM scores",
    "INSERT OVERWRITE DIRECTORY '/tmp/lake/scores' USING parquet SELECT * FROM scores",
    "DROP TABLE scores", "DELETE FROM scores WHERE vig < 0", "CREATE TABLE x AS SELECT * FROM scores",
    "WITH t AS (SELECT * FROM scores) INSERT INTO scores SELECT * FROM t",
    "FROM scores INSERT OVERWRITE TABLE corpus SELECT *",
    "SELECT 1; DROP TABLE scores", "UPDATE scores SET vig = 0", "MERGE INTO scores USING x ON true",
    "SET spark.sql.shuffle.partitions=1", "VACUUM delta.`/tmp/lake/scores`", "", "/* only a comment */",
    # Spark's lexer: a raw string has no escapes, and a comment ends at a carriage return
    "WITH x AS (SELECT r'\\' AS a) INSERT OVERWRITE DIRECTORY '/tmp/lake/scores' USING parquet SELECT * FROM x",
    "WITH x AS (SELECT 1 AS a) --\rINSERT OVERWRITE DIRECTORY '/tmp/l' USING parquet SELECT * FROM x",
    "SELECT reflect('java.lang.System', 'exit', 0)", "SELECT java_method('java.lang.System', 'exit', 0)",
])
def test_writing_statements_are_refused_with_a_way_forward(statement):
    with pytest.raises(ReadOnlyError, match="read-only statements .*vig lake vacuum"):
        check_read_only(statement)


def test_sessions_get_delta_lakes_jars_and_s3a_its_hadoop_aws(monkeypatch, tmp_path):
    import importlib.metadata

    import pyspark
    from pyspark.sql import SparkSession

    from vig_udf.config import SparkConfig
    from vig_udf.spark.session import hadoop_aws_package, with_delta

    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    monkeypatch.setenv("VIG_SPARK_JARS_CACHE", str(tmp_path / "none-resolved-yet"))
    spark_minor = ".".join(pyspark.__version__.split(".")[:2])
    delta = f"io.delta:delta-spark_{spark_minor}_2.13:{importlib.metadata.version('delta-spark')}"
    jars = sorted(p.name for p in (Path(pyspark.__file__).parent / "jars").glob("hadoop-client-api-*.jar"))
    assert hadoop_aws_package() == "org.apache.hadoop:hadoop-aws:" + jars[-1][len("hadoop-client-api-"):-len(".jar")]

    local = with_delta(SparkSession.builder, SparkConfig(conf={"spark.jars.packages": "a:b:1"}))._options
    assert local["spark.jars.packages"].split(",") == [delta, "a:b:1"]
    assert local["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert local["spark.driver.bindAddress"] == "127.0.0.1"  # a local session listens on loopback only
    on_s3 = with_delta(SparkSession.builder, SparkConfig(master="yarn", conf={"spark.driver.host": "h"}),
                       uris=["/local/lake", "s3a://bucket/input.json"])._options
    assert on_s3["spark.jars.packages"].split(",") == [delta, hadoop_aws_package()]
    assert on_s3["spark.driver.host"] == "h" and "spark.driver.bindAddress" not in on_s3
    # the local JVM compiles with the quick compiler only, beside the user's own options; a cluster's is left alone
    assert local["spark.driver.extraJavaOptions"] == "-XX:TieredStopAtLevel=1"
    mine = with_delta(SparkSession.builder, SparkConfig(conf={"spark.driver.extraJavaOptions": "-Xss4m"}))._options
    assert mine["spark.driver.extraJavaOptions"].split() == ["-XX:TieredStopAtLevel=1", "-Xss4m"]
    full = with_delta(SparkSession.builder, SparkConfig(quick_jit=False))._options
    assert "spark.driver.extraJavaOptions" not in on_s3 and "spark.driver.extraJavaOptions" not in full


class _Conf:
    def __init__(self, conf: dict):
        self.conf = conf

    def get(self, key, default=None):
        return self.conf.get(key, default)


class _Session:
    def __init__(self, conf: dict):
        self.sparkContext = type("Context", (), {"getConf": lambda _: _Conf(conf)})()


def test_jars_are_resolved_once_and_passed_as_files_afterwards(monkeypatch, tmp_path):
    from pyspark.sql import SparkSession

    from vig_udf.config import SparkConfig
    from vig_udf.spark.session import delta_packages, with_delta
    from vig_udf.spark.startup import remember_resolved_jars, resolved_jars

    monkeypatch.setenv("VIG_SPARK_JARS_CACHE", str(tmp_path / "cache"))
    cfg = SparkConfig(master="local[1]", conf={"spark.jars": "/mine/own.jar"})
    packages = delta_packages(cfg)
    assert with_delta(SparkSession.builder, cfg)._options["spark.jars.packages"] == ",".join(packages)
    ivy = tmp_path / "ivy" / "jars"
    ivy.mkdir(parents=True)
    jars = [ivy / ("_".join(p.split(":")[:2]) + "-" + p.split(":")[2] + ".jar") for p in packages]
    jars.append(ivy / "org.example_dependency-1.0.jar")
    for jar in jars:
        jar.write_bytes(b"PK")
    # a session that reused a JVM started for other packages records nothing
    remember_resolved_jars(_Session({"spark.jars.packages": ",".join(packages), "spark.jars": f"file://{jars[-1]}"}))
    assert resolved_jars(packages) is None
    remember_resolved_jars(_Session({"spark.jars.packages": ",".join(packages),
                                     "spark.jars": ",".join(f"file://{jar}" for jar in jars)}))
    assert resolved_jars(packages) == [str(jar) for jar in jars]
    options = with_delta(SparkSession.builder, cfg)._options
    assert "spark.jars.packages" not in options
    assert options["spark.jars"].split(",") == ["/mine/own.jar", *map(str, jars)]  # the config's own jar kept
    assert resolved_jars(packages + ["org.apache.hadoop:hadoop-aws:3.5.0"]) is None  # another set: resolved anew
    jars[0].unlink()  # a jar removed from the Ivy cache: resolved again
    assert resolved_jars(packages) is None
    assert "spark.jars.packages" in with_delta(SparkSession.builder, cfg)._options


def test_history_entries_of_other_writers_are_not_misread():
    foreign = history_entry({"version": 2, "userMetadata": json.dumps({"job": "x", "config": "{not json"})})
    assert foreign["job"] is None and foreign["config"] is None


def test_commit_metadata_redacts_credentials_and_nothing_else():
    config = {"spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": "s", "spark.hadoop.fs.s3a.access.key": "a",
                                 "spark.hadoop.fs.s3a.session.token": "t", "spark.hadoop.fs.s3a.endpoint": "e",
                                 "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net": "k"}},
              "scorer": {"prompt_format": {"image_token": "<image>", "end_of_turn": "</s>"}, "batch_tokens": 8},
              "password": "p", "token": "x"}
    recorded = json.loads(commit_metadata(job="j", config=config, write_id="w")["config"])
    conf = recorded["spark"]["conf"]
    assert {k for k, v in conf.items() if v == "<redacted>"} == set(config["spark"]["conf"]) - {
        "spark.hadoop.fs.s3a.endpoint"}
    assert recorded["scorer"] == config["scorer"] and recorded["password"] == recorded["token"] == "<redacted>"


def test_a_creator_that_loses_the_race_merges_at_once_and_every_retry_is_logged(monkeypatch, caplog):
    from delta.exceptions import base

    import vig_udf.lake.write as write

    pauses, attempts, created = [], [], [False]
    monkeypatch.setattr(write.time, "sleep", pauses.append)

    def create_or_merge():
        attempts.append(created[0])
        if len(attempts) == 1:  # another ingest created the table while this one tried to
            created[0] = True
            raise base.ProtocolChangedException("The protocol version of the Delta table has been changed")
        if len(attempts) == 2:  # then a merge conflicted with a third writer's: this one waits
            raise base.ConcurrentAppendException("Files were added by a concurrent update")

    with caplog.at_level("WARNING", logger="vig_udf.lake.write"):
        write._retry_conflicts(create_or_merge, "lake/corpus", exists=lambda: created[0])
    assert attempts == [False, True, True] and len(pauses) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert "another writer created the table first (ProtocolChangedException: The protocol" in messages[0]
    assert "concurrent commit (ConcurrentAppendException: Files were added" in messages[1]
    assert messages[2] == "lake/corpus: committed on attempt 3 of 8"


def test_each_pyspark_installation_has_its_own_class_archive(tmp_path, monkeypatch):
    import pyspark

    from vig_udf.spark import startup

    if startup._java() is None:
        pytest.skip("no Java")
    jars = ["/ivy/jars/io.delta_delta-spark_2.13-4.0.0.jar"]
    here = startup._archive_path(jars)
    other = tmp_path / "other-venv" / "pyspark"
    (other / "jars").mkdir(parents=True)
    for jar in (Path(pyspark.__file__).parent / "jars").glob("*.jar"):  # the same jar names, another folder
        (other / "jars" / jar.name).write_bytes(b"PK")
    monkeypatch.setattr(pyspark, "__file__", str(other / "__init__.py"))
    assert startup._archive_path(jars) != here  # the JVM would not map an archive of the other class path


def test_the_log_is_complete_from_version_0_without_a_checkpoint_and_newest_reads_the_last_commits(tmp_path):
    from vig_udf.lake.log_check import log_history, read_log
    from vig_udf.storage import Storage

    log = tmp_path / "t" / "_delta_log"
    log.mkdir(parents=True)

    def commit(version: int) -> None:
        info = {"commitInfo": {"timestamp": 1_700_000_000_000 + version, "operation": "WRITE"}}
        (log / f"{version:020d}.json").write_text(json.dumps(info) + "\n")

    storage = Storage.from_conf(None)
    for version in (1, 2, 3):
        commit(version)
    assert read_log(storage, tmp_path / "t").missing == [0]  # commit 0 deleted, and no checkpoint replaces it
    (log / f"{1:020d}.checkpoint.parquet").write_bytes(b"")
    assert read_log(storage, tmp_path / "t").missing == []  # log clean-up after a checkpoint at 1
    newest = read_log(storage, tmp_path / "t", newest=2)
    assert sorted(newest.commits) == [2, 3] and [e["version"] for e in log_history(newest)] == [3, 2]
