"""The ingest and score jobs on local Spark over Delta tables (one Spark session for the test session)."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from deltalake import DeltaTable

from tests.conftest import random_image
from vig_udf import VIGScorer
from vig_udf.config import ScorerConfig
from vig_udf.demo.world import generate
from vig_udf.lake import read_table, table_history, table_version
from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
from vig_udf.spark.score_job import ScoreJobConfig, run_score

pytestmark = pytest.mark.spark


def write_corpus(root: Path, n: int = 16, seed: int = 3) -> list[dict]:
    """Shapes-world records with their images saved under root/images/<source>/; returns the records."""
    records = []
    for i, rec in enumerate(generate(n, seed=seed)):
        out = {"id": rec["id"], "conversations": rec["conversations"]}
        if "image" in rec:
            source = ("coco/train2017", "gqa/images")[i % 2]
            (root / "images" / source).mkdir(parents=True, exist_ok=True)
            rec["image"].save(root / "images" / source / f"{rec['id']}.png")
            out["image"] = f"{source}/{rec['id']}.png"
        records.append(out)
    (root / "records.json").write_text(json.dumps(records))
    return records


def bad_records(root: Path) -> tuple[list[dict], dict[str, str]]:
    """Records that must each end with a known status; returns (records, id -> expected status)."""
    images = root / "images" / "bad"
    images.mkdir(parents=True, exist_ok=True)
    (images / "corrupt.png").write_bytes(b"not an image at all")
    buf = io.BytesIO()
    random_image(64, 64, 1).save(buf, format="JPEG")
    (images / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    random_image(300, 300, 2).save(images / "huge.png")
    random_image(40, 40, 3).save(images / "fine.png")
    qa = [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "It is red."}]
    cases = {
        "corrupt": ({"image": "bad/corrupt.png", "conversations": qa}, "image_unreadable"),
        "truncated": ({"image": "bad/truncated.jpg", "conversations": qa}, "image_unreadable"),
        "oversized": ({"image": "bad/huge.png", "conversations": qa}, "image_unreadable"),
        "missing": ({"image": "bad/nope.png", "conversations": qa}, "image_unreadable"),
        "outside": ({"image": "../../etc/passwd", "conversations": qa}, "image_unreadable"),
        "empty": ({"image": "bad/fine.png", "conversations": []}, "invalid_conversation"),
        "one_sided": ({"image": "bad/fine.png", "conversations": qa[:1]}, "no_answer_tokens"),
        "no_placeholder": ({"image": "bad/fine.png", "conversations": [
            {"from": "human", "value": "What colour?"}, qa[1]]}, "invalid_conversation"),
        "two_placeholders": ({"image": "bad/fine.png", "conversations": [
            {"from": "human", "value": "<image> <image> What?"}, qa[1]]}, "invalid_conversation"),
        "no_conversations": ({"image": "bad/fine.png"}, "invalid_record"),
    }
    records = [{"id": key, **rec} for key, (rec, _) in cases.items()]
    return records, {key: status for key, (_, status) in cases.items()}


def scorer_config(checkpoint: str, root: Path, **extra) -> ScorerConfig:
    return ScorerConfig(model_path=checkpoint, image_root=str(root / "images"), dtype="float32", **extra)


def score_rows(spark, lake: Path, scorer_id: str | None = None) -> dict[str, dict]:
    df = read_table(spark, str(lake / "scores"))
    rows = [r.asDict() for r in df.collect()]
    return {r["sample_id"]: r for r in rows if scorer_id is None or r["scorer_id"] == scorer_id}


def assert_no_orphan_files(spark, table: Path) -> None:
    """Every data file in the table folder belongs to its latest version, and nothing is left staged."""
    referenced = {os.path.basename(u) for u in read_table(spark, str(table)).inputFiles()}
    assert {p.name for p in table.rglob("*.parquet")} == referenced
    staging = table.parent / "_staging" / table.name
    assert not staging.exists() or not list(staging.iterdir())


@pytest.fixture(scope="module")
def lake_with_corpus(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    records = write_corpus(root)
    bad, expected = bad_records(root)
    records_all = records + bad + [dict(records[0])]  # one duplicated id
    (root / "records.json").write_text(json.dumps(records_all))
    cfg = IngestJobConfig(input=str(root / "records.json"), image_root=str(root / "images"), lake=str(root / "lake"))
    summary = run_ingest(spark, cfg, out=lambda *_: None)
    return root, records_all, expected, summary, cfg


def test_ingest_keeps_every_record_with_a_status_and_stable_ids(spark, lake_with_corpus):
    root, records, expected, summary, cfg = lake_with_corpus
    assert summary["input_rows"] == summary["new_rows"] == len(records)
    corpus = {r["sample_id"]: r.asDict() for r in read_table(spark, str(root / "lake" / "corpus")).collect()}
    assert len(corpus) == len(records)
    for key, status in expected.items():
        if status == "image_unreadable" and key in ("corrupt", "truncated", "oversized"):
            assert corpus[key]["status"] == "ok"  # decoding problems surface when scoring
        else:
            assert corpus[key]["status"] == status, (key, corpus[key]["error"])
    first_id = records[0]["id"]
    duplicated = [r for r in corpus.values() if r["source_id"] == first_id]
    assert len(duplicated) == 2 and all(r["duplicate_id"] and r["sample_id"] != first_id for r in duplicated)
    assert summary["duplicate_id_rows"] == 2
    assert {r["source"] for r in corpus.values() if r["image_path"]} >= {"coco", "gqa", "bad"}
    last = table_history(spark, str(root / "lake" / "corpus"))[0]
    assert last["job"] == "ingest" and last["config"]["input"] == cfg.input and last["code_version"]
    again = run_ingest(spark, cfg, out=lambda *_: None)
    assert again["corpus_version"] is None and table_version(spark, str(root / "lake" / "corpus")) == 0


def test_score_every_row_once_with_the_right_status_and_single_process_scores(
        spark, lake_with_corpus, tiny_checkpoints):
    root, records, expected, _, _ = lake_with_corpus
    cfg = ScoreJobConfig(lake=str(root / "lake"), partitions=3, scorer=scorer_config(
        tiny_checkpoints["llava"], root, max_length=4096, batch_tokens=4096, max_image_pixels=200 * 200))
    summary = run_score(spark, cfg, out=lambda *_: None)
    scores = score_rows(spark, root / "lake", summary["scorer_id"])
    assert len(scores) == len(records) == summary["rows_for_scorer"]
    for key, status in expected.items():
        assert scores[key]["status"] == status, (key, scores[key]["error"])
        assert scores[key]["error"]
    local = VIGScorer.from_pretrained(tiny_checkpoints["llava"], image_root=str(root / "images"), max_length=4096,
                                      max_image_pixels=200 * 200)
    duplicated = records[-1]["id"]  # stored under content ids, not under this id
    good = [r for r in records[:16] if "image" in r and r["id"] != duplicated]
    assert good
    for result in local.score(good):
        row = scores[result.sample_id]
        assert row["status"] == "ok"
        np.testing.assert_allclose(row["token_vig"], result.token_vig, atol=1e-5)
        assert row["vig"] == pytest.approx(result.vig, abs=1e-5)
    again = run_score(spark, cfg, out=lambda *_: None)
    assert again["scored"] == 0
    assert_no_orphan_files(spark, root / "lake" / "scores")


def test_interrupted_score_resumes_and_equals_a_clean_run(spark, tmp_path, tiny_checkpoints):
    write_corpus(tmp_path, n=12, seed=5)
    run_ingest(spark, IngestJobConfig(input=str(tmp_path / "records.json"), image_root=str(tmp_path / "images"),
                                      lake=str(tmp_path / "clean")), out=lambda *_: None)
    shutil.copytree(tmp_path / "clean", tmp_path / "resumed")  # the same corpus (a Delta table's paths are relative)
    scorer = scorer_config(tiny_checkpoints["qwen2_vl"], tmp_path)
    clean = run_score(spark, ScoreJobConfig(lake=str(tmp_path / "clean"), scorer=scorer), out=lambda *_: None)

    class Interrupted(Exception):
        pass

    def stop_after_first_commit(line: str):
        if line.startswith("commit 1:"):
            raise Interrupted(line)

    # six tasks, two at a time, a commit per 2 rows: the first commit comes while later tasks score
    cfg = ScoreJobConfig(lake=str(tmp_path / "resumed"), scorer=scorer, rows_per_commit=2, partitions=6, poll_s=0.2)
    with pytest.raises(Interrupted):
        run_score(spark, cfg, out=stop_after_first_commit)
    first = len(score_rows(spark, tmp_path / "resumed"))
    assert 0 < first < 12
    resumed = run_score(spark, cfg, out=lambda *_: None)
    assert resumed["scored"] == 12 - first
    a, b = score_rows(spark, tmp_path / "clean"), score_rows(spark, tmp_path / "resumed")
    assert sorted(a) == sorted(b) and resumed["scorer_id"] == clean["scorer_id"]
    for sample_id, row in a.items():
        assert row["status"] == b[sample_id]["status"]
        if row["status"] == "ok":
            np.testing.assert_allclose(row["token_vig"], b[sample_id]["token_vig"], atol=1e-6)


def test_a_second_scorer_adds_rows_side_by_side_and_time_travel(spark, lake_with_corpus, tiny_checkpoints):
    root, records, _, _, _ = lake_with_corpus
    scores_path = str(root / "lake" / "scores")
    before = table_version(spark, scores_path)
    cfg = ScoreJobConfig(lake=str(root / "lake"), scorer=scorer_config(
        tiny_checkpoints["llava"], root, counterfactual="drop", max_length=4096, max_image_pixels=200 * 200))
    summary = run_score(spark, cfg, out=lambda *_: None)
    both = read_table(spark, scores_path)
    assert both.select("scorer_id").distinct().count() == 2
    assert both.count() == 2 * len(records)
    previous = read_table(spark, scores_path, version=before)
    assert previous.count() == len(records)
    assert previous.where(previous.scorer_id == summary["scorer_id"]).count() == 0
    via_delta_rs = DeltaTable(scores_path).to_pyarrow_table()
    assert sorted(zip(via_delta_rs["sample_id"].to_pylist(), via_delta_rs["scorer_id"].to_pylist())) == sorted(
        (r.sample_id, r.scorer_id) for r in both.select("sample_id", "scorer_id").collect())
    meta = table_history(spark, scores_path)[0]
    assert meta["job"] == "score" and summary["scorer_id"] in json.dumps(meta["config"])


def test_vig_sql_answers_a_join_of_scores_and_corpus(spark, lake_with_corpus, capsys):
    from typer.testing import CliRunner

    from vig_udf.cli import app

    root = lake_with_corpus[0]
    result = CliRunner().invoke(app, ["sql", "SELECT c.source, count(*) AS n FROM scores s JOIN corpus c "
                                             "USING (sample_id) WHERE s.status = 'ok' GROUP BY c.source ORDER BY 1",
                                      f"lake={root / 'lake'}", "engine=spark"])
    assert result.exit_code == 0, result.output
    printed = result.output + capsys.readouterr().out
    assert "coco" in printed and "gqa" in printed


@pytest.mark.parametrize("statement", [
    "INSERT INTO scores SELECT * FROM scores",
    "INSERT OVERWRITE DIRECTORY '{lake}/scores' USING parquet SELECT * FROM scores",
    "DROP TABLE IF EXISTS scores", "DELETE FROM delta.`{lake}/scores`", "CREATE TABLE x AS SELECT * FROM corpus",
    # hidden from the text check by a nested comment (Spark nests them); Spark's own parser sees the DELETE
    "WITH x AS (SELECT 1 a) /* /* */ ' */ DELETE FROM delta.`{lake}/scores` --'",
])
def test_vig_sql_refuses_statements_that_write_and_the_tables_stay(spark, lake_with_corpus, statement):
    from typer.testing import CliRunner

    from vig_udf.cli import app

    lake = lake_with_corpus[0] / "lake"
    before = {name: (table_version(spark, str(lake / name)), sorted(p.name for p in (lake / name).rglob("*")))
              for name in ("corpus", "scores")}
    result = CliRunner().invoke(app, ["sql", statement.format(lake=lake), f"lake={lake}", "engine=spark"])
    assert result.exit_code == 2 and "read-only statements" in result.output
    assert "vig lake vacuum" in result.output  # says how to change tables on purpose
    assert before == {name: (table_version(spark, str(lake / name)), sorted(p.name for p in (lake / name).rglob("*")))
                      for name in ("corpus", "scores")}
    looked = CliRunner().invoke(app, ["sql", f"DESCRIBE HISTORY delta.`{lake}/corpus`", f"lake={lake}", "engine=spark"])
    assert looked.exit_code == 0, looked.output


def test_images_stored_as_bytes_score_like_paths(spark, tmp_path, tiny_checkpoints):
    records = write_corpus(tmp_path, n=6, seed=12)
    lake = tmp_path / "lake"
    run_ingest(spark, IngestJobConfig(input=str(tmp_path / "records.json"), image_root=str(tmp_path / "images"),
                                      lake=str(lake), image_storage="bytes"), out=lambda *_: None)
    corpus = {r.sample_id: r for r in read_table(spark, str(lake / "corpus")).collect()}
    with_image = [r for r in records if "image" in r]
    for rec in with_image:
        assert corpus[rec["id"]].image_bytes == (tmp_path / "images" / rec["image"]).read_bytes()
    # no image_root at scoring time: the bytes in the table are all the scorer needs
    summary = run_score(spark, ScoreJobConfig(lake=str(lake), scorer=ScorerConfig(
        model_path=tiny_checkpoints["llava"], dtype="float32")), out=lambda *_: None)
    scores = score_rows(spark, lake, summary["scorer_id"])
    local = VIGScorer.from_pretrained(tiny_checkpoints["llava"], image_root=str(tmp_path / "images"))
    for result in local.score(with_image):
        np.testing.assert_allclose(scores[result.sample_id]["token_vig"], result.token_vig, atol=1e-5)


def test_ingest_jsonl_and_parquet_give_the_same_corpus(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = write_corpus(tmp_path, n=6, seed=14)
    (tmp_path / "records.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{not json}\n")
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "records.parquet")
    corpora = {}
    for name in ("records.jsonl", "records.parquet"):
        lake = tmp_path / name.replace(".", "_")
        summary = run_ingest(spark, IngestJobConfig(input=str(tmp_path / name), image_root=str(tmp_path / "images"),
                                                    lake=str(lake)), out=lambda *_: None)
        rows = read_table(spark, str(lake / "corpus")).collect()
        corpora[name] = {r.sample_id: (r.status, r.image_path, [tuple(t) for t in r.conversations or []])
                         for r in rows if r.status != "invalid_record"}
        assert summary["input_rows"] == len(rows)
        invalid = [r for r in rows if r.status == "invalid_record"]
        assert len(invalid) == (1 if name.endswith(".jsonl") else 0)  # the malformed line is kept as a row
    assert corpora["records.jsonl"] == corpora["records.parquet"]
    assert len(corpora["records.jsonl"]) == len(records)


def test_cli_runs_ingest_score_select_from_a_config_file(spark, tmp_path, tiny_checkpoints):
    from typer.testing import CliRunner

    from vig_udf.cli import app

    records = write_corpus(tmp_path, n=5, seed=21)
    conf = tmp_path / "conf.yaml"
    conf.write_text(f"lake: {tmp_path / 'lake'}\n"
                    f"ingest: {{input: {tmp_path / 'records.json'}, image_root: {tmp_path / 'images'}}}\n"
                    f"score: {{scorer: {{model_path: {tiny_checkpoints['llava']}, dtype: float32}}}}\n"
                    "select: {policies: [vig, random]}\n")
    runner = CliRunner()
    for command in (["ingest"], ["score", f"scorer.image_root={tmp_path / 'images'}"], ["select", "p=50"]):
        result = runner.invoke(app, [command[0], "--config", str(conf), *command[1:]])
        assert result.exit_code == 0, (command, result.output, result.exception)
    assert read_table(spark, str(tmp_path / "lake" / "scores")).count() == len(records)
    selection = read_table(spark, str(tmp_path / "lake" / "selection"))
    assert sorted(r.policy for r in selection.select("policy").distinct().collect()) == ["random", "vig"]
    assert selection.count() == 2 * len(records)
