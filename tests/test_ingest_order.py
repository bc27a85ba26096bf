"""Ingest at scale: a one-array JSON read in parallel through its shards, ordinals global across inputs."""

from __future__ import annotations

import json

import pytest

from vig_udf.lake import read_table
from vig_udf.spark.ingest_job import IngestJobConfig, read_records, run_ingest
from vig_udf.spark.json_shards import stage_json_array

pytestmark = pytest.mark.spark


def text_records(prefix: str, n: int) -> list[dict]:
    """Text-only LLaVA records (no image files needed), ids in order."""
    return [{"id": f"{prefix}{i:03d}", "conversations": [{"from": "human", "value": f"question {prefix} {i}"},
                                                        {"from": "gpt", "value": f"answer {i}"}]} for i in range(n)]


def test_a_one_array_json_is_read_by_several_tasks(spark, tmp_path):
    records = text_records("a", 40)
    (tmp_path / "in.json").write_text(json.dumps(records))
    assert stage_json_array(spark, str(tmp_path / "in.json"), str(tmp_path / "shards"), records_per_shard=7) == 40
    raw = read_records(spark, f"{tmp_path / 'shards'}/*.jsonl")
    assert raw.rdd.getNumPartitions() > 1
    assert raw.select("_file").distinct().count() == 6
    assert sorted(r["id"] for r in raw.collect()) == [r["id"] for r in records]


def test_ingest_order_is_global_across_inputs_and_the_staging_is_removed(spark, tmp_path):
    first, second = text_records("b", 30), text_records("a", 12)  # ids sort the other way from ingest order
    (tmp_path / "first.json").write_text(json.dumps(first))
    (tmp_path / "second.jsonl").write_text("".join(json.dumps(r) + "\n" for r in second))
    lake = str(tmp_path / "lake")
    one = run_ingest(spark, IngestJobConfig(input=str(tmp_path / "first.json"), lake=lake, json_shard_records=4),
                     out=lambda *_: None)
    two = run_ingest(spark, IngestJobConfig(input=str(tmp_path / "second.jsonl"), lake=lake), out=lambda *_: None)
    assert (one["new_rows"], two["new_rows"]) == (30, 12)
    rows = read_table(spark, f"{lake}/corpus").orderBy("ingest_ordinal").collect()
    assert [r["sample_id"] for r in rows] == [r["id"] for r in first + second]  # rows in == rows out, in order
    assert [r["ingest_ordinal"] for r in rows] == list(range(42))
    assert not any((tmp_path / "lake" / "_staging" / "ingest").iterdir())
