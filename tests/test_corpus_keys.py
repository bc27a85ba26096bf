"""Every key of a record kept: ingest stores the keys beyond id, image and conversations (``extra``) and their
order (``key_order``); the export writes them back byte-equal for JSON, JSONL and Parquet inputs. Also the
Hugging Face layouts (an Image struct column, ``messages``), and text with lone surrogates on the Spark path."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import random_image
from vig_udf.corpus import parse_record
from vig_udf.lake import read_table
from vig_udf.preflight import InputError, check_input
from vig_udf.selection.policies import TEXT_ONLY_KEPT
from vig_udf.spark.export_job import export_lines, exported_record
from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest

QUIET = {"out": lambda *_: None}
QA = [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "It is red, très rouge."}]
TEXT_QA = [{"from": "human", "value": "Name a prime."}, {"from": "gpt", "value": "Seven."}]


def keyed_records() -> list[dict]:
    """Records as real corpora carry them: LLaVA-665K's text-only ``"model": ""`` between id and conversations,
    nested metadata, keys in another order, non-ASCII text."""
    return [
        {"id": "a", "image": "coco/a.png", "conversations": QA},
        {"id": "b", "model": "", "conversations": TEXT_QA},
        {"id": "c", "image": "coco/c.png", "conversations": QA, "source": "sharegpt4v",
         "metadata": {"license": "cc-by", "scores": [0.5, 2], "é": None}},
        {"conversations": TEXT_QA, "id": "d", "weight": 1.5},
    ]


def save_images(root: Path) -> str:
    for i, name in enumerate(("a", "c")):
        (root / "images" / "coco").mkdir(parents=True, exist_ok=True)
        random_image(40, 32, i).save(root / "images" / "coco" / f"{name}.png")
    return str(root / "images")


def exported(rows: list[dict]) -> dict[str, str]:
    """The export's record text for corpus rows (through the executors' function), by record id."""
    joined = [{**row, "_ordinal": row.get("ingest_ordinal"), "reason": TEXT_ONLY_KEPT, "token_keep": None,
               "n_tokens": 0, "n_tokens_kept": 0, "token_turn": None, "token_char_start": None,
               "token_char_end": None, "_scored": True, "_in_corpus": True, "_has_bytes": False,
               "extra": row.get("extra"), "key_order": row.get("key_order")} for row in rows]
    batch = pa.RecordBatch.from_pylist([{k: v for k, v in r.items() if k != "image_bytes"} for r in joined])
    out = [line for b in export_lines(False)([batch]) for line in b.to_pylist()]
    assert all(line["problem"] is None for line in out), out
    return {line["record_id"]: line["record"] for line in out}


def corpus_rows(spark, lake: str) -> list[dict]:
    return [r.asDict(recursive=True) for r in read_table(spark, lake + "/corpus").collect()]


def test_a_record_round_trips_byte_equal_through_parse_and_export():
    for record in keyed_records():
        text = json.dumps(record, ensure_ascii=False)
        parsed = parse_record(text)
        again = exported_record(parsed.id, parsed.image, parsed.conversations, parsed.extra, parsed.key_order)
        assert json.dumps(again, ensure_ascii=False) == text
    assert parse_record(json.dumps(keyed_records()[0])).extra is None  # the LLaVA layout stores nothing more
    assert parse_record(json.dumps(keyed_records()[0])).key_order is None
    # an id the export has to give (none in the input) goes first; the rest keeps its order
    parsed = parse_record('{"model": "x", "conversations": []}')
    assert list(exported_record("h1", None, [], parsed.extra, parsed.key_order)) == ["id", "model", "conversations"]


@pytest.mark.spark
def test_ingest_keeps_every_key_and_the_export_writes_records_byte_equal(spark, tmp_path):
    records = keyed_records()
    image_root = save_images(tmp_path)
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    # a lone surrogate (json.dumps writes it as the escape \ud800) is invalid_conversation, not turned into "?"
    surrogate = json.dumps({"id": "s", "conversations": [TEXT_QA[0], {"from": "gpt", "value": "bad \ud800 text"}]})
    (tmp_path / "in.jsonl").write_text("\n".join(lines + [surrogate]) + "\n")
    table = pa.Table.from_pylist([{"id": "p1", "image": "coco/a.png", "conversations": QA, "model": "",
                                   "meta": {"n": 3, "tag": "x"}},
                                  {"id": "p2", "image": None, "conversations": TEXT_QA, "model": "gpt",
                                   "meta": {"n": 4, "tag": None}}])
    pq.write_table(table, tmp_path / "in.parquet")
    parquet_lines = [json.dumps(r, ensure_ascii=False) for r in table.to_pylist()]
    # (a .json array is checked end to end, through score and select, in tests/test_export_job.py)
    for name, expected in (("in.jsonl", lines), ("in.parquet", parquet_lines)):
        lake = str(tmp_path / f"lake_{name.replace('.', '_')}")
        run_ingest(spark, IngestJobConfig(input=str(tmp_path / name), image_root=image_root, lake=lake), **QUIET)
        rows = corpus_rows(spark, lake)
        if name == "in.jsonl":
            [bad] = [r for r in rows if r["sample_id"] == "s"]
            assert bad["status"] == "invalid_conversation" and "lone surrogate" in bad["error"]
            assert "\ufffd" in bad["conversations"][1]["value"]
            rows.remove(bad)
        assert {r["status"] for r in rows} <= {"ok", "text_only"}, rows
        got = exported(rows)
        assert got == {json.loads(line)["id"]: line for line in expected}, name


@pytest.mark.spark
def test_a_corpus_written_before_the_key_columns_still_ingests_and_exports(spark, tmp_path):
    image_root = save_images(tmp_path)
    lake = str(tmp_path / "lake")
    (tmp_path / "old.jsonl").write_text(json.dumps({"id": "old", "image": "coco/a.png", "conversations": QA}) + "\n")
    run_ingest(spark, IngestJobConfig(input=str(tmp_path / "old.jsonl"), image_root=image_root, lake=lake), **QUIET)
    old = read_table(spark, lake + "/corpus").drop("extra", "key_order")
    old.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(lake + "/corpus")
    assert "extra" not in read_table(spark, lake + "/corpus").columns
    new = {"id": "new", "model": "", "conversations": TEXT_QA}
    (tmp_path / "new.jsonl").write_text(json.dumps(new) + "\n")
    run_ingest(spark, IngestJobConfig(input=str(tmp_path / "new.jsonl"), image_root=image_root, lake=lake), **QUIET)
    rows = {r["sample_id"]: r for r in corpus_rows(spark, lake)}
    assert rows["old"]["extra"] is None and rows["new"]["extra"] == '{"model": ""}'
    assert exported(list(rows.values()))["new"] == json.dumps(new)


def hub_table(tmp_path: Path) -> pa.Table:
    """Rows in the layout ``datasets`` writes for an ``Image()`` feature and chat ``messages``: the image a struct
    ``{bytes: binary, path: string}`` (bytes embedded, or a path relative to image_root), content typed parts."""
    (tmp_path / "images").mkdir(exist_ok=True)
    random_image(36, 28, 5).save(tmp_path / "images" / "on_disk.png")
    buf = io.BytesIO()
    random_image(40, 30, 6).save(buf, format="PNG")
    part = pa.struct([("type", pa.string()), ("text", pa.string())])
    message = pa.struct([("role", pa.string()), ("content", pa.list_(part))])
    schema = pa.schema([("id", pa.string()), ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                        ("messages", pa.list_(message)), ("source", pa.string())])
    ask = [{"type": "image", "text": None}, {"type": "text", "text": "What is shown?"}]
    answer = [{"type": "text", "text": "Some coloured shapes."}]
    rows = [{"id": "embedded", "image": {"bytes": buf.getvalue(), "path": None}, "source": "hub",
             "messages": [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]},
            {"id": "by_path", "image": {"bytes": None, "path": "on_disk.png"}, "source": "hub",
             "messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                          {"role": "user", "content": ask}, {"role": "assistant", "content": answer}]}]
    return pa.Table.from_pylist(rows, schema=schema)


def test_a_parquet_input_without_a_conversation_column_is_an_input_error(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "text": ["hello"]}), tmp_path / "x.parquet")
    with pytest.raises(InputError, match=r"columns are \['id', 'text'\].*'conversations', 'messages'"):
        check_input(str(tmp_path / "x.parquet"))
    folder = tmp_path / "folder"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["a"]}), folder / "part-0.parquet")
    with pytest.raises(InputError, match="no conversation column"):
        check_input(str(folder))


def test_the_cli_exits_2_on_a_parquet_input_without_conversations(tmp_path, monkeypatch, capsys):
    from vig_udf import cli

    pq.write_table(pa.table({"id": ["a"], "text": ["hello"]}), tmp_path / "x.parquet")
    monkeypatch.setattr("sys.argv", ["vig", "ingest", f"input={tmp_path / 'x.parquet'}", f"lake={tmp_path / 'l'}"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    assert "no conversation column" in capsys.readouterr().err


@pytest.mark.spark
def test_a_hub_layout_parquet_ingests_and_scores(spark, tmp_path, tiny_checkpoints):
    from vig_udf.config import ScorerConfig
    from vig_udf.spark.score_job import ScoreJobConfig, run_score

    table = hub_table(tmp_path)
    pq.write_table(table, tmp_path / "hub.parquet")
    lake = str(tmp_path / "lake")
    summary = run_ingest(spark, IngestJobConfig(input=str(tmp_path / "hub.parquet"),
                                                image_root=str(tmp_path / "images"), lake=lake), **QUIET)
    assert summary["rows_by_status"] == {"ok": 2}
    rows = {r["sample_id"]: r for r in corpus_rows(spark, lake)}
    embedded = rows["embedded"]
    assert embedded["image_bytes"] == table.column("image")[0].as_py()["bytes"]
    assert embedded["image_path"].startswith("embedded/") and embedded["image_path"].endswith(".png")
    assert [t["from"] for t in embedded["conversations"]] == ["human", "gpt"]
    assert embedded["conversations"][0]["value"] == "<image>\nWhat is shown?"
    assert rows["by_path"]["image_path"] == "on_disk.png" and rows["by_path"]["image_bytes"] is None
    assert [t["from"] for t in rows["by_path"]["conversations"]] == ["system", "human", "gpt"]
    assert json.loads(embedded["extra"]) == {"source": "hub"}
    scored = run_score(spark, ScoreJobConfig(lake=lake, partitions=1, scorer=ScorerConfig(
        model_path=tiny_checkpoints["llava"], dtype="float32", image_root=str(tmp_path / "images"))), **QUIET)
    assert scored["rows_by_status"] == {"ok": 2}, scored
    low, high = scored["vig_range"]
    assert low <= high and (scored["warning"] is not None) == (max(abs(low), abs(high)) <= 0.001)
    # the scorer, told apart by `vig lake scorers` (read without Spark)
    from typer.testing import CliRunner

    from vig_udf.cli import app

    listed = CliRunner().invoke(app, ["lake", "scorers", f"lake={lake}", "engine=local"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.startswith(f"{scored['scorer_id']}  {tiny_checkpoints['llava']}  family llava  "
                                    "counterfactual blur  rows 2  last scored "), listed.output
