"""The dataflow at scale, small: a one-array JSON read in parallel through its shards, ingest order global
across inputs, and an export written by several tasks as ordered parts in that order."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from vig_udf.lake import read_table
from vig_udf.selection.policies import TEXT_ONLY_KEPT
from vig_udf.spark.arrow import SCORES_SCHEMA
from vig_udf.spark.export_job import ExportJobConfig, mask_path, run_export
from vig_udf.spark.ingest_job import IngestJobConfig, read_records, run_ingest
from vig_udf.spark.json_shards import stage_json_array
from vig_udf.spark.select_job import SELECTION_SCHEMA

pytestmark = pytest.mark.spark


def text_records(prefix: str, n: int) -> list[dict]:
    """Text-only LLaVA records (no image files needed), ids in order."""
    return [{"id": f"{prefix}{i:03d}", "conversations": [{"from": "human", "value": f"question {prefix} {i}"},
                                                        {"from": "gpt", "value": f"answer {i}"}]} for i in range(n)]


def test_a_one_array_json_is_read_by_several_tasks(spark, tmp_path):
    records = text_records("a", 40)
    (tmp_path / "in.json").write_text(json.dumps(records))
    assert stage_json_array(spark, str(tmp_path / "in.json"), str(tmp_path / "shards"), records_per_shard=7) == 40
    raw = read_records(spark, str(tmp_path / "shards"), jsonl_folder=True)
    assert raw.rdd.getNumPartitions() > 1
    assert raw.select("_file").distinct().count() == 6
    assert sorted(json.loads(r["_record"])["id"] for r in raw.collect()) == [r["id"] for r in records]


@pytest.fixture(scope="module")
def two_inputs(spark, tmp_path_factory) -> tuple[str, list[dict]]:
    """A lake holding a one-array JSON (ingested in shards of 4) and then a JSONL; returns it and the records."""
    tmp_path = tmp_path_factory.mktemp("two_inputs")
    first, second = text_records("b", 30), text_records("a", 12)  # ids sort the other way from ingest order
    (tmp_path / "first.json").write_text(json.dumps(first))
    (tmp_path / "second.jsonl").write_text("".join(json.dumps(r) + "\n" for r in second))
    lake = str(tmp_path / "lake")
    one = run_ingest(spark, IngestJobConfig(input=str(tmp_path / "first.json"), lake=lake, json_shard_records=4),
                     out=lambda *_: None)
    two = run_ingest(spark, IngestJobConfig(input=str(tmp_path / "second.jsonl"), lake=lake), out=lambda *_: None)
    assert (one["new_rows"], two["new_rows"]) == (30, 12)
    return lake, first + second


def test_ingest_order_is_global_across_inputs_and_the_staging_is_removed(spark, two_inputs):
    lake, records = two_inputs
    rows = read_table(spark, f"{lake}/corpus").orderBy("ingest_ordinal").collect()
    assert [r["sample_id"] for r in rows] == [r["id"] for r in records]  # rows in == rows out, in order
    assert [r["ingest_ordinal"] for r in rows] == list(range(42))
    assert not any((Path(lake) / "_staging" / "ingest").iterdir())


def test_ordinals_are_the_same_through_either_offsets_table_and_any_file_name(spark, tmp_path, monkeypatch):
    import vig_udf.spark.ingest_job as ingest_job

    records = text_records("c", 9)
    source = tmp_path / "records.json"
    source.write_text(json.dumps(records))
    orders = []
    for inline in (ingest_job.INLINE_SPLITS, 0):  # 0: the offsets as a DataFrame of Python rows
        monkeypatch.setattr(ingest_job, "INLINE_SPLITS", inline)
        lake = str(tmp_path / f"it's a lake, ünïcode {inline}")  # the shards' paths hold a quote and non-ASCII
        run_ingest(spark, IngestJobConfig(input=str(source), lake=lake, json_shard_records=4), out=lambda *_: None)
        rows = read_table(spark, f"{lake}/corpus").orderBy("ingest_ordinal").collect()
        orders.append([(r["sample_id"], r["ingest_ordinal"]) for r in rows])
    assert orders[0] == orders[1] == [(r["id"], n) for n, r in enumerate(records)]  # 3 shards, in array order


def test_export_writes_ordered_parts_in_ingest_order_with_umask_permissions(spark, two_inputs, tmp_path):
    lake, records = two_inputs
    ids = [r["id"] for r in records]
    now = dt.datetime.now(dt.timezone.utc)
    scores = [{"sample_id": s, "scorer_id": "stub", "status": "text_only", "n_tokens": 0, "token_ids": [],
               "token_turn": [], "token_char_start": [], "token_char_end": [], "scored_at": now} for s in ids]
    write_deltalake(f"{lake}/scores", pa.Table.from_pylist(scores, schema=SCORES_SCHEMA))
    kept = [s for i, s in enumerate(ids) if i % 7 != 3]  # a subset, from both inputs
    selection = [{"sample_id": s, "scorer_id": "stub", "policy": "all", "selection_id": "sel", "params_hash": "h",
                  "params": "{}", "kept": s in kept, "reason": TEXT_ONLY_KEPT, "token_keep": [], "n_tokens": 2,
                  "n_tokens_kept": 2, "tau": None, "p": 100.0, "scores_version": 0} for s in reversed(ids)]
    write_deltalake(f"{lake}/selection", pa.Table.from_pylist(selection, schema=SELECTION_SCHEMA))

    output = tmp_path / "out" / "all.json"
    summary = run_export(spark, ExportJobConfig(lake=lake, policy="all", output=str(output), part_rows=5),
                         out=lambda *_: None)
    assert summary["records"] == len(kept) == 36 > 5
    assert summary["parts"] >= 6 and 0 < summary["largest_part_rows"] <= 10  # written by several tasks
    assert sorted(p.name for p in output.parent.iterdir()) == ["all.json", "all.mask.json"]  # no staging left
    exported = json.loads(output.read_text())
    assert [r["id"] for r in exported] == kept  # in ingest order across both inputs
    assert exported == [r for r in records if r["id"] in kept]  # the records unchanged
    masks = json.loads(Path(mask_path(str(output))).read_text())
    assert list(masks["masks"]) == kept and masks["masks"]["b000"] == [[0, 0, len("answer 0")]]
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (output, Path(mask_path(str(output)))):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask

    cfg = ExportJobConfig(lake=lake, policy="all", output=str(output), part_rows=5)
    written = output.stat().st_mtime_ns
    again = run_export(spark, cfg, out=lambda *_: None)  # nothing changed: found, not written again
    assert again["unchanged"] and again["records"] == 36 and output.stat().st_mtime_ns == written
    output.write_text(output.read_text().replace("answer 0", "answer 9"))  # edited: the hash no longer matches
    shared = tmp_path / "shared"  # the part files in a folder of the user's choosing, removed afterwards
    assert not run_export(spark, cfg.model_copy(update={"staging_dir": str(shared)}), out=lambda *_: None)["unchanged"]
    assert json.loads(output.read_text()) == exported and not any(shared.iterdir())


def test_score_tasks_and_files_are_sized_from_the_data(spark, tmp_path, tiny_checkpoints):
    from vig_udf.config import ScorerConfig
    from vig_udf.spark.score_job import ScoreJobConfig, run_score, task_partitions

    assert task_partitions(10_000, 2_000, 2) == 5 and task_partitions(100, 2_000, 2) == 2
    assert task_partitions(1, 2_000, 8) == 1 and task_partitions(0, 2_000, 8) == 1
    lake = str(tmp_path / "lake")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text_records("t", 24)))
    run_ingest(spark, IngestJobConfig(input=str(tmp_path / "in.jsonl"), lake=lake), out=lambda *_: None)
    summary = run_score(spark, ScoreJobConfig(lake=lake, rows_per_task=5, rows_per_file=2, scorer=ScorerConfig(
        model_path=tiny_checkpoints["llava"], dtype="float32")), out=lambda *_: None)
    assert summary["rows_for_scorer"] == 24  # rows in == rows out
    assert summary["tasks"] == 5 and summary["commits"] == 1  # 24 rows in tasks of at most 5, one commit
    files = read_table(spark, f"{lake}/scores").inputFiles()
    assert len(files) >= 12  # each file rolls after 2 rows
    assert spark.conf.get("spark.sql.files.maxRecordsPerFile") != "2"  # the session is left as it was
    cfg = ScoreJobConfig(lake=lake, scorer=ScorerConfig(model_path=tiny_checkpoints["llava"], dtype="float32"))
    again = run_score(spark, cfg, out=lambda *_: None)  # nothing to do: found in the history, no join
    assert again["scored"] == 0 and again["completed_in"] == 0
    (tmp_path / "more.jsonl").write_text(json.dumps(text_records("u", 1)[0]) + "\n")
    run_ingest(spark, IngestJobConfig(input=str(tmp_path / "more.jsonl"), lake=lake), out=lambda *_: None)
    assert run_score(spark, cfg, out=lambda *_: None)["scored"] == 1  # a new corpus version: scored
