"""Multi-image records on the Spark side: ingest (LLaVA ``image`` lists, ``images``, Hugging Face Parquet with a
list of Image structs), the corpus's ``more_images`` column, the export writing each record back as it came, and
a multi-image corpus through ingest, score, select, train and export on the families that take several images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import random_image
from vig_udf.corpus import content_id, parse_record
from vig_udf.lake import read_table
from vig_udf.selection.policies import TEXT_ONLY_KEPT
from vig_udf.spark.export_job import export_lines, exported_images, exported_record
from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest

QUIET = {"out": lambda *_: None}


def qa(question: str, answer: str, images: int = 1) -> list[dict]:
    """One question (``images`` placeholders before it) and its answer."""
    return [{"from": "human", "value": "<image>\n" * images + question}, {"from": "gpt", "value": answer}]


# records in each layout a multi-image corpus comes in; they need no change on export (byte-equal)
RECORDS = [
    {"id": "two", "image": ["coco/a.png", "coco/b.png"], "conversations": qa("Which one is brighter?", "The left.", 2)},
    {"id": "one_list", "image": ["coco/a.png"], "conversations": qa("What is it?", "Shapes.")},
    {"id": "images_key", "images": ["gqa/c.png", "coco/a.png", "coco/b.png"], "source": "mantis",
     "conversations": [{"from": "human", "value": "<image><image> Compare these."},
                       {"from": "gpt", "value": "Both are coloured."},
                       {"from": "human", "value": "And <image>?"}, {"from": "gpt", "value": "Also coloured."}]},
    {"id": "single", "image": "coco/a.png", "conversations": qa("Colour?", "Red.")},
    {"id": "empty_list", "image": [], "conversations": qa("Name a prime.", "Seven.", 0)},
]
# records that cannot be scored, with their status and (part of) their message
BAD = [
    ({"id": "count", "image": ["coco/a.png", "coco/b.png"], "conversations": qa("Which?", "Left.", 1)},
     "invalid_conversation", "2 images but 1 <image> placeholders"),
    ({"id": "missing_2nd", "image": ["coco/a.png", "coco/nope.png"], "conversations": qa("Which?", "Left.", 2)},
     "image_unreadable", "image 2 of 2: image file not found"),
    ({"id": "missing_3rd", "images": ["coco/a.png", "coco/b.png", "gone.png"],
      "conversations": qa("Which?", "Left.", 3)}, "image_unreadable", "image 3 of 3: image file not found"),
]


def save_images(root: Path) -> str:
    for i, name in enumerate(("coco/a.png", "coco/b.png", "gqa/c.png")):
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        random_image(40 + 8 * i, 32, i).save(root / "images" / name)
    return str(root / "images")


def export_texts(rows: list[dict], renamed: bool = False) -> dict[str, str]:
    """The export's record text for corpus rows (through the executors' function), by record id."""
    joined = []
    for row in rows:
        more = [{"path": m["path"], "has_bytes": m["bytes"] is not None} for m in row.get("more_images") or []]
        joined.append({**{k: v for k, v in row.items() if k != "image_bytes"}, "more_images": more or None,
                       "_ordinal": row.get("ingest_ordinal"), "reason": TEXT_ONLY_KEPT, "token_keep": None,
                       "n_tokens": 0, "n_tokens_kept": 0, "token_turn": None, "token_char_start": None,
                       "token_char_end": None, "_scored": True, "_in_corpus": True,
                       "_has_bytes": row.get("image_bytes") is not None})
    out = [line for b in export_lines(renamed)([pa.RecordBatch.from_pylist(joined)]) for line in b.to_pylist()]
    assert all(line["problem"] is None for line in out), out
    return {line["record_id"]: line["record"] for line in out}


def corpus_rows(spark, lake: str) -> dict[str, dict]:
    return {r["sample_id"]: r.asDict(recursive=True) for r in read_table(spark, lake + "/corpus").collect()}


def test_each_image_layout_parses_and_exports_back_as_it_came():
    for record in RECORDS:
        text = json.dumps(record)
        parsed = parse_record(text)
        image = parsed.images if parsed.image_list else parsed.image
        assert json.dumps(exported_record(parsed.id, image, parsed.conversations, parsed.extra,
                                          parsed.key_order)) == text
    two = parse_record(json.dumps(RECORDS[0]))
    assert (two.image, two.images, two.image_list, two.key_order) == ("coco/a.png", RECORDS[0]["image"], True, None)
    # content ids see every image; a list of one is the one path
    assert content_id("x", ["a.png", "b.png"], []) != content_id("x", ["a.png", "c.png"], [])
    assert content_id("x", ["a.png"], []) == content_id("x", "a.png", [])
    # the bytes-stored images of a list are exported at their place under the images folder
    row = {"image_path": "/abs/a.png", "_has_bytes": True, "image_list": True,
           "more_images": [{"path": "b.png", "has_bytes": False}, {"path": "./c/d.png", "has_bytes": True}]}
    assert exported_images(row, True) == ["abs/a.png", "b.png", "c/d.png"]
    assert exported_images(row, False) == ["/abs/a.png", "b.png", "./c/d.png"]


@pytest.mark.spark
def test_ingest_stores_every_image_and_the_export_writes_the_records_back(spark, tmp_path):
    image_root = save_images(tmp_path)
    lines = [json.dumps(r) for r in RECORDS + [bad for bad, _, _ in BAD]]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    lake = str(tmp_path / "lake")
    summary = run_ingest(spark, IngestJobConfig(input=str(tmp_path / "in.jsonl"), image_root=image_root, lake=lake),
                         **QUIET)
    assert summary["input_rows"] == len(lines)
    rows = corpus_rows(spark, lake)
    assert set(rows) == {json.loads(line)["id"] for line in lines}
    for bad, status, message in BAD:
        assert rows[bad["id"]]["status"] == status and message in rows[bad["id"]]["error"], rows[bad["id"]]
    assert "(expected 2)" in rows["count"]["error"]
    two, three = rows["two"], rows["images_key"]
    assert (two["status"], two["image_path"], two["source"], two["image_list"]) == ("ok", "coco/a.png", "coco", True)
    assert two["more_images"] == [{"path": "coco/b.png", "bytes": None}]
    assert [m["path"] for m in three["more_images"]] == ["coco/a.png", "coco/b.png"]
    assert (three["status"], three["image_path"], three["source"]) == ("ok", "gqa/c.png", "gqa")
    assert (rows["one_list"]["status"], rows["one_list"]["image_path"], rows["one_list"]["more_images"]) == \
        ("ok", "coco/a.png", None)
    assert rows["single"]["image_list"] is False and rows["empty_list"]["status"] == "text_only"
    good = [rows[r["id"]] for r in RECORDS]
    assert export_texts(good) == {r["id"]: json.dumps(r) for r in RECORDS}
    # image_storage=bytes reads every image of a record
    lake_bytes = str(tmp_path / "lake_bytes")
    run_ingest(spark, IngestJobConfig(input=str(tmp_path / "in.jsonl"), image_root=image_root, lake=lake_bytes,
                                      image_storage="bytes"), **QUIET)
    stored = corpus_rows(spark, lake_bytes)["images_key"]
    assert stored["image_bytes"] == (tmp_path / "images" / "gqa/c.png").read_bytes()
    assert [m["bytes"] for m in stored["more_images"]] == [(tmp_path / "images" / p).read_bytes()
                                                          for p in ("coco/a.png", "coco/b.png")]


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    random_image(36, 30, seed).save(buf, format="PNG")
    return buf.getvalue()


def hub_images_table(tmp_path: Path) -> pa.Table:
    """Rows in the layout ``datasets`` writes for a ``Sequence(Image())`` feature (a list of ``{bytes, path}``
    structs) and chat ``messages`` with several image parts."""
    save_images(tmp_path)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    part = pa.struct([("type", pa.string()), ("text", pa.string())])
    message = pa.struct([("role", pa.string()), ("content", pa.list_(part))])
    schema = pa.schema([("id", pa.string()), ("images", pa.list_(image)), ("messages", pa.list_(message))])

    def ask(n: int) -> list[dict]:
        return [{"type": "image", "text": None}] * n + [{"type": "text", "text": "What differs?"}]

    answer = [{"type": "text", "text": "The colours."}]
    rows = [
        {"id": "mixed", "images": [{"bytes": png(7), "path": None}, {"bytes": None, "path": "coco/b.png"}],
         "messages": [{"role": "user", "content": ask(2)}, {"role": "assistant", "content": answer}]},
        {"id": "both_bytes", "images": [{"bytes": png(8), "path": "x.png"}, {"bytes": png(9), "path": None}],
         "messages": [{"role": "user", "content": ask(2)}, {"role": "assistant", "content": answer}]},
        {"id": "too_few_slots", "images": [{"bytes": png(7), "path": None}, {"bytes": png(8), "path": None}],
         "messages": [{"role": "user", "content": ask(1)}, {"role": "assistant", "content": answer}]},
        {"id": "bad_2nd", "images": [{"bytes": None, "path": "coco/a.png"}, {"bytes": None, "path": "no.png"}],
         "messages": [{"role": "user", "content": ask(2)}, {"role": "assistant", "content": answer}]},
        {"id": "none", "images": [], "messages": [{"role": "user", "content": ask(0)},
                                                  {"role": "assistant", "content": answer}]},
    ]
    return pa.Table.from_pylist(rows, schema=schema)


@pytest.mark.spark
def test_a_hub_parquet_with_a_list_of_image_structs_ingests_every_image(spark, tmp_path):
    table = hub_images_table(tmp_path)
    pq.write_table(table, tmp_path / "hub.parquet")
    lake = str(tmp_path / "lake")
    summary = run_ingest(spark, IngestJobConfig(input=str(tmp_path / "hub.parquet"),
                                                image_root=str(tmp_path / "images"), lake=lake), **QUIET)
    assert summary["rows_by_status"] == {"ok": 2, "invalid_conversation": 1, "image_unreadable": 1, "text_only": 1}
    rows = corpus_rows(spark, lake)
    mixed = rows["mixed"]
    assert mixed["image_bytes"] == png(7) and mixed["image_path"].startswith("embedded/")
    assert mixed["more_images"] == [{"path": "coco/b.png", "bytes": None}]
    assert mixed["conversations"][0]["value"] == "<image>\n<image>\nWhat differs?"
    both = rows["both_bytes"]
    assert (both["image_path"], both["image_bytes"]) == ("x.png", png(8))
    [second] = both["more_images"]
    assert second["bytes"] == png(9) and second["path"].startswith("embedded/")
    assert "2 images but 1 <image> placeholders" in rows["too_few_slots"]["error"]
    assert rows["bad_2nd"]["error"].startswith("image 2 of 2: image file not found")
    # the export writes the images under their key as a list, bytes-stored ones at their folder paths
    exported = {k: json.loads(v) for k, v in export_texts([mixed, both, rows["none"]], renamed=True).items()}
    assert exported["mixed"]["images"] == [mixed["image_path"], "coco/b.png"]
    assert exported["both_bytes"]["images"] == ["x.png", second["path"]] and exported["none"]["images"] == []
    # vig check's Parquet sample gives a record all its images, bytes winning over the path image by image
    from vig_udf.spark.check_job import sample_input

    sampled = {r["id"]: r["image"] for r in sample_input(spark, str(tmp_path / "hub.parquet"), n=10, seed=0)}
    assert sampled["mixed"] == [png(7), "coco/b.png"] and sampled["both_bytes"] == [png(8), png(9)]
    assert "none" not in sampled


def test_vig_check_takes_a_list_of_one_as_its_image_and_skips_several():
    from vig_udf.check import MULTI_IMAGE, _has_image, one_image, score_conditions

    assert one_image({"image": ["a.png"]}) == "a.png" and one_image({"images": ["b.png"]}) == "b.png"
    assert one_image({"image": "a.png", "images": ["x"]}) == "a.png"
    assert not _has_image({"image": []}) and not _has_image({"images": None}) and _has_image({"images": ["a", "b"]})

    class NoScorer:  # the records are skipped before anything is scored
        options = None

        def score(self, records):
            raise AssertionError("nothing to score")

    samples, skipped = score_conditions(NoScorer(), [{"id": "x", "image": ["a.png", "b.png"]}])
    assert samples == [] and skipped == {MULTI_IMAGE: 1}


def chain_records(root: Path) -> list[dict]:
    """A multi-image corpus as LLaVA-OneVision / Mantis write it, one single-image record and one text-only;
    images saved under root/images."""
    save_images(root)
    return [
        {"id": "pair", "image": ["coco/a.png", "coco/b.png"], "conversations": qa("Which is wider?", "The second.", 2)},
        {"id": "triple", "images": ["gqa/c.png", "coco/a.png", "coco/b.png"], "source": "mantis",
         "conversations": [{"from": "human", "value": "<image>\n<image>\n<image>\nCompare them."},
                           {"from": "gpt", "value": "They are alike."},
                           {"from": "human", "value": "Which is wider?"},
                           {"from": "gpt", "value": "The first."}]},
        {"id": "single", "image": "coco/b.png", "conversations": qa("Describe it.", "Coloured blocks.")},
        {"id": "text", "model": "", "conversations": qa("Name a prime.", "Seven.", 0)},
    ]


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.parametrize("family", ["qwen2_vl", "idefics3"])
def test_a_multi_image_corpus_goes_through_score_select_train_and_export(spark, tmp_path, tiny_checkpoints, family):
    from vig_udf.config import ScorerConfig
    from vig_udf.scoring.scorer import VIGScorer
    from vig_udf.spark.export_job import ExportJobConfig, run_export
    from vig_udf.spark.score_job import ScoreJobConfig, run_score
    from vig_udf.spark.select_job import SelectJobConfig, run_select
    from vig_udf.spark.train_job import TrainJobConfig, run_train

    records = chain_records(tmp_path)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    lake, image_root = str(tmp_path / "lake"), str(tmp_path / "images")
    ingested = run_ingest(spark, IngestJobConfig(input=str(tmp_path / "in.jsonl"), image_root=image_root, lake=lake,
                                                 image_storage="bytes"), **QUIET)
    assert ingested["rows_by_status"] == {"ok": 3, "text_only": 1}
    scorer = ScorerConfig(model_path=tiny_checkpoints[family], dtype="float32", image_attribution=True)
    scored = run_score(spark, ScoreJobConfig(lake=lake, partitions=1, scorer=scorer), **QUIET)
    assert scored["rows_by_status"] == {"ok": 3, "text_only": 1}, scored
    scores = {r["sample_id"]: r.asDict() for r in read_table(spark, lake + "/scores").collect()}
    assert {s: len(r["image_vig"] or []) for s, r in scores.items()} == {"pair": 2, "triple": 3, "single": 1,
                                                                         "text": 0}
    # the score job hands the scorer every image of a row: its VIGs are the in-process scorer's on the same records
    local = VIGScorer.from_pretrained(tiny_checkpoints[family], dtype="float32", image_root=image_root,
                                      image_attribution=True)
    for result in local.score([{**r, "image": r.get("image") or r.get("images")} for r in records]):
        row = scores[result.sample_id]
        assert row["vig"] == pytest.approx(result.vig, abs=1e-4), result.sample_id
        if result.image_vig is not None:
            assert row["image_vig"] == pytest.approx(list(result.image_vig), abs=1e-4)
    selected = run_select(spark, SelectJobConfig(lake=lake, policies=["all"]), **QUIET)
    assert selected["policies"]["all"]["kept_multimodal"] == 3
    trained = run_train(spark, TrainJobConfig(
        lake=lake, policy="all", output_dir=str(tmp_path / "run"),
        training={"steps": 1, "batch_size": 4, "warmup_ratio": 0.0, "checkpoint_every": 0},
        mlflow={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "multi-image",
                "artifact_location": str(tmp_path / "artifacts"), "system_metrics": False, "log_model": False}),
        out=lambda *_: None)
    assert trained["rows"] == 4 and trained["skipped"] == {} and trained["supervised_tokens"] > 0, trained
    exported = run_export(spark, ExportJobConfig(lake=lake, policy="all", output=str(tmp_path / "out" / "all.json")),
                          **QUIET)
    assert exported["records"] == len(records) and exported["images_written"] == 6  # every image of every record
    for name in ("coco/a.png", "coco/b.png", "gqa/c.png"):
        assert (tmp_path / "out" / "images" / name).read_bytes() == (tmp_path / "images" / name).read_bytes()
    # every record needs no change: the export is byte-equal to the input records
    text = (tmp_path / "out" / "all.json").read_text()
    assert text == "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n"
