"""The export job: ingest (images as bytes) -> score with a tiny real checkpoint -> select -> export, then the
exported JSON re-ingested and the mask sidecar mapped back onto the scorer's tokens."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from pydantic import ValidationError

from tests.conftest import random_image
from vig_udf.config import ScorerConfig
from vig_udf.lake import read_table
from vig_udf.selection.spans import keep_from_spans, weights_from_spans
from vig_udf.spark.export_job import (ExportJobConfig, Part, _write_export, image_writer, mask_path, part_writer,
                                     run_export)
from vig_udf.spark.ingest_job import IngestJobConfig, run_ingest
from vig_udf.spark.score_job import ScoreJobConfig, run_score
from vig_udf.spark.select_job import SELECTION_SCHEMA, SelectJobConfig, run_select
from vig_udf.storage import Storage

pytestmark = pytest.mark.spark
QUIET = {"out": lambda *_: None}


def qa(question: str, *answers: str, image: bool = True, questions: tuple[str, ...] = ()) -> list[dict]:
    """A conversation: the first question (with the placeholder when ``image``), then answers and follow-ups."""
    turns = [{"from": "human", "value": f"<image>\n{question}" if image else question}]
    for i, answer in enumerate(answers):
        if i:
            turns.append({"from": "human", "value": questions[i - 1]})
        turns.append({"from": "gpt", "value": answer})
    return turns


def write_records(root: Path) -> list[dict]:
    """Records with answers padded by whitespace (offsets into ``value`` differ from offsets into the answer),
    multi-turn, text-only, one without an id and one invalid; images saved under root/images."""
    records = [
        {"id": "red", "image": "coco/red.png", "conversations": qa("What colour is the square?", " Red.\n"),
         "source": "coco", "metadata": {"licence": 3}},
        {"id": "multi", "image": "gqa/multi.png", "conversations": qa(
            "What colour is the circle?", "The circle is blue.", "  There are three circles on the left.", "Yes",
            questions=("How many circles are there?", "Is it on the left?"))},
        {"id": "text", "model": "", "conversations": qa("How do I reverse a list in Python?", " Use slicing: my_list[::-1].",
                                           image=False)},
        {"image": "coco/noid.png", "conversations": qa("Describe the image.",
                                                       "A small blue square above a large green triangle.")},
        {"id": "wide", "image": "coco/wide.png", "conversations": qa("What is on the right?", "A green triangle ")},
        {"id": "count", "image": "gqa/count.png", "conversations": qa("How many?", "There are three circles.")},
        {"id": "where", "image": "coco/where.png", "conversations": qa("Where is the apple?", "\nOn the left side.")},
        {"id": "broken", "image": "coco/red.png", "conversations": [{"from": "gpt", "value": "no question"}]},
    ]
    for i, rec in enumerate(r for r in records if r.get("image") and r.get("id") != "broken"):
        path = root / "images" / rec["image"]
        path.parent.mkdir(parents=True, exist_ok=True)
        random_image(48 + 8 * i, 40, i).save(path)
    (root / "records.json").write_text(json.dumps(records))
    return records


@pytest.fixture(scope="module")
def chain(spark, tmp_path_factory):
    """The lake after ingest (bytes), score (tiny llava), select (vig and token, p=50) and the vig export."""
    from vig_udf.tiny import build_tiny_checkpoint

    root = tmp_path_factory.mktemp("export")
    records = write_records(root)
    lake = str(root / "lake")
    run_ingest(spark, IngestJobConfig(input=str(root / "records.json"), image_root=str(root / "images"), lake=lake,
                                      image_storage="bytes"), **QUIET)
    checkpoint = build_tiny_checkpoint("llava", root / "tiny", seed=1)
    scored = run_score(spark, ScoreJobConfig(lake=lake, partitions=1, scorer=ScorerConfig(
        model_path=checkpoint, dtype="float32")), **QUIET)
    selected = run_select(spark, SelectJobConfig(lake=lake, policies=["vig", "token"], p=50), **QUIET)
    lines: list[str] = []
    summary = run_export(spark, ExportJobConfig(lake=lake, policy="vig", output=str(root / "out" / "vig.json")),
                         out=lines.append)
    return {"root": root, "lake": lake, "records": records, "checkpoint": checkpoint, "scored": scored,
            "selected": selected, "summary": summary, "lines": lines}


def kept_rows(spark, chain, policy: str) -> dict[str, dict]:
    """sample_id -> selection row of the kept samples of one policy's selection."""
    selection_id = chain["selected"]["policies"][policy]["selection_id"]
    rows = read_table(spark, chain["lake"] + "/selection").where(f"selection_id = '{selection_id}' AND kept")
    return {r["sample_id"]: r.asDict() for r in rows.collect()}


def table_rows(spark, path: str) -> dict[str, dict]:
    return {r["sample_id"]: r.asDict() for r in read_table(spark, path).collect()}


def answers_of(record: dict) -> list[str]:
    return [t["value"] for t in record["conversations"] if t["from"] == "gpt"]


def test_export_round_trips_through_ingest_with_the_kept_records_in_input_order(spark, chain):
    summary, root = chain["summary"], chain["root"]
    kept = kept_rows(spark, chain, "vig")
    corpus = table_rows(spark, chain["lake"] + "/corpus")
    assert 0 < len(kept) < sum(1 for r in corpus.values() if r["status"] in ("ok", "text_only"))  # a real subset
    exported = json.loads(Path(summary["output"]).read_text())
    assert summary["records"] == len(exported) == len(kept)
    input_order = [corpus[s]["sample_id"] for s in sorted(corpus, key=lambda s: corpus[s]["ingest_ordinal"])]
    assert [r["id"] for r in exported] == [s for s in input_order if s in kept]
    # every key kept, in its order: a record that keeps its id is byte-equal to its input (LLaVA-665K's text-only
    # records carry "model": "" between id and conversations)
    by_id = {r.get("id"): r for r in chain["records"]}
    lines = Path(summary["output"]).read_text().removeprefix("[\n").removesuffix("\n]\n").split(",\n")
    assert len(lines) == len(exported)
    for line, record in zip(lines, exported):
        if record["id"] in by_id:
            assert line == json.dumps(by_id[record["id"]]), record["id"]
    assert list(next(r for r in exported if r["id"] == "text")) == ["id", "model", "conversations"]

    lake2 = str(root / "reingested")
    again = run_ingest(spark, IngestJobConfig(input=summary["output"], image_root=str(root / "out" / "images"),
                                              lake=lake2, image_storage="bytes"), **QUIET)
    assert again["rows_by_status"].get("ok", 0) + again["rows_by_status"].get("text_only", 0) == len(kept)
    reingested = table_rows(spark, lake2 + "/corpus")
    as_sample = lambda r: (r["image_path"], [t.asDict() for t in r["conversations"]], r["image_bytes"])  # noqa: E731
    assert {s: as_sample(r) for s, r in reingested.items()} == {s: as_sample(corpus[s]) for s in kept}


def test_mask_spans_map_back_to_exactly_the_selected_tokens_as_offsets_into_value(spark, chain):
    from transformers import AutoTokenizer

    summary = chain["summary"]
    sidecar = json.loads(Path(summary["mask"]).read_text())
    records = {r["id"]: r for r in json.loads(Path(summary["output"]).read_text())}
    kept = kept_rows(spark, chain, "vig")
    scores = table_rows(spark, chain["lake"] + "/scores")
    tokenizer = AutoTokenizer.from_pretrained(chain["checkpoint"])
    assert set(sidecar["masks"]) == set(records) == set(kept)
    partial = 0
    for sample_id, spans in sidecar["masks"].items():
        score, keep = scores[sample_id], np.asarray(kept[sample_id]["token_keep"], dtype=bool)
        answers = answers_of(records[sample_id])
        # the scores table's offsets are into the stripped answer; the sidecar's into the exported value
        lead = np.array([len(v) - len(v.lstrip()) for v in answers])
        turn = np.asarray(score["token_turn"])
        start, end = np.asarray(score["token_char_start"]) + lead[turn], np.asarray(score["token_char_end"]) + lead[turn]
        np.testing.assert_array_equal(keep_from_spans(turn, start, end, spans), keep)
        partial += int(0 < keep.sum() < len(keep))
        ids = np.asarray(score["token_ids"])
        for k, s, e in spans:  # each span's text is the text of the tokens inside it
            inside = (turn == k) & (start < e) & (end > s)
            text = tokenizer.decode(ids[inside].tolist(), clean_up_tokenization_spaces=False)
            assert text.strip() == answers[k][s:e].strip() and answers[k][s:e].strip(), (sample_id, k, s, e)
    assert partial, "the vig policy should keep only some tokens of some sample"
    text_answer = answers_of(records["text"])[0]  # kept whole, from after its leading space to its end
    assert sidecar["masks"]["text"][0][1] == 1 and sidecar["masks"]["text"][-1][2] == len(text_answer)
    selection_id = chain["selected"]["policies"]["vig"]["selection_id"]
    assert (sidecar["format"], sidecar["selection_id"], sidecar["policy"]) == ("vig-spark/token-mask", selection_id,
                                                                                 "vig")
    assert sidecar["tau"] == pytest.approx(chain["selected"]["tau"]) and sidecar["params"]["p"] == 50
    assert sidecar["scorer_id"] == chain["scored"]["scorer_id"]
    assert {name: t["version"] for name, t in sidecar["tables"].items()} == {"selection": 0, "scores": 0, "corpus": 0}
    assert sidecar["records_sha256"] == hashlib.sha256(Path(summary["output"]).read_bytes()).hexdigest()
    assert summary["tokens_kept"] == sum(sum(r["token_keep"]) for r in kept.values())


def test_bytes_stored_images_are_written_next_to_the_output(spark, chain):
    summary, root = chain["summary"], chain["root"]
    exported = json.loads(Path(summary["output"]).read_text())
    images = [r["image"] for r in exported if "image" in r]
    assert summary["images_written"] == len(images) > 0
    for name in images:
        assert (root / "out" / "images" / name).read_bytes() == (root / "images" / name).read_bytes()
    assert summary["mask"] == mask_path(summary["output"]) == str(root / "out" / "vig.mask.json")
    assert any(f"wrote {summary['records']} records" in line for line in chain["lines"])


def test_recorded_paths_only_and_a_pinned_selection_id(spark, chain, tmp_path):
    selection_id = chain["selected"]["policies"]["token"]["selection_id"]
    output = tmp_path / "token.json"
    summary = run_export(spark, ExportJobConfig(lake=chain["lake"], selection_id=selection_id, output=str(output),
                                                images_dir=None), **QUIET)
    exported = json.loads(output.read_text())
    kept = kept_rows(spark, chain, "token")
    assert summary["images_written"] == 0 and not (tmp_path / "images").exists()
    corpus = table_rows(spark, chain["lake"] + "/corpus")
    assert {r["id"]: r.get("image") for r in exported} == {s: corpus[s]["image_path"] for s in kept}
    masks = json.loads(Path(mask_path(str(output))).read_text())["masks"]
    assert set(masks) == set(kept) and summary["tokens_kept"] == sum(sum(r["token_keep"]) for r in kept.values())


def test_a_token_weighted_selection_exports_its_weights_as_weighted_spans(spark, chain, tmp_path):
    """token_weight=vig with tau_by=source (in a copy of the lake, so the module's one vig selection stays the only
    one): each span carries a weight, and the spans give the scorer's kept tokens back with their stored weights."""
    lake = tmp_path / "lake"
    shutil.copytree(chain["lake"], lake)
    selected = run_select(spark, SelectJobConfig(lake=str(lake), policies=["sample"], p=50, token_weight="vig",
                                                 token_weight_max=2.0, tau_by="source"), **QUIET)
    selection_id = selected["policies"]["sample"]["selection_id"]
    output = tmp_path / "weighted.json"
    run_export(spark, ExportJobConfig(lake=str(lake), selection_id=selection_id, output=str(output), images_dir=None),
               **QUIET)
    sidecar = json.loads(Path(mask_path(str(output))).read_text())
    assert sidecar["params"]["token_weight"] == {"method": "vig", "temperature": 1.0, "w_max": 2.0}
    assert sidecar["tau"] is None and sidecar["taus"] == selected["taus"] and len(selected["taus"]) == 2
    records = {r["id"]: r for r in json.loads(output.read_text())}
    kept = {r["sample_id"]: r.asDict() for r in read_table(spark, str(lake / "selection"))
            .where(f"selection_id = '{selection_id}' AND kept").collect()}
    scores = table_rows(spark, str(lake / "scores"))
    assert set(sidecar["masks"]) == set(kept) and "text" in kept
    varied = 0
    for sample_id, spans in sidecar["masks"].items():
        assert spans and all(len(span) == 4 and 0 <= span[3] <= 2.0 for span in spans)
        keep, stored = np.asarray(kept[sample_id]["token_keep"]), np.asarray(kept[sample_id]["token_weight"])
        answers = answers_of(records[sample_id])
        lead = np.array([len(v) - len(v.lstrip()) for v in answers])
        turn = np.asarray(scores[sample_id]["token_turn"])
        start = np.asarray(scores[sample_id]["token_char_start"]) + lead[turn]
        end = np.asarray(scores[sample_id]["token_char_end"]) + lead[turn]
        np.testing.assert_array_equal(keep_from_spans(turn, start, end, [span[:3] for span in spans]), keep)
        np.testing.assert_allclose(weights_from_spans(turn, start, end, spans)[keep], stored[keep], rtol=1e-6)
        varied += int(len({span[3] for span in spans}) > 1)
    assert {span[3] for span in sidecar["masks"]["text"]} == {1.0} and varied


def test_cli_exports_from_the_config_section(spark, chain, tmp_path):
    from typer.testing import CliRunner

    from vig_udf.cli import app

    conf = tmp_path / "conf.yaml"
    conf.write_text(f"lake: {chain['lake']}\nexport: {{policy: vig, output: {tmp_path / 'cli.json'}}}\n")
    result = CliRunner().invoke(app, ["export", "--config", str(conf), "policy=token"])
    assert result.exit_code == 0, (result.output, result.exception)
    kept = kept_rows(spark, chain, "token")
    assert f"wrote {len(kept)} records" in result.output
    assert {r["id"] for r in json.loads((tmp_path / "cli.json").read_text())} == set(kept)


def test_unknown_or_ambiguous_selection_and_missing_tables_are_clear_errors(spark, chain, tmp_path):
    vig_id = chain["selected"]["policies"]["vig"]["selection_id"]
    with pytest.raises(ValueError, match="no selection_id 'nope'.*" + vig_id):
        run_export(spark, ExportJobConfig(lake=chain["lake"], selection_id="nope", output=str(tmp_path / "x.json")),
                   **QUIET)
    with pytest.raises(FileNotFoundError, match="vig select"):
        run_export(spark, ExportJobConfig(lake=str(tmp_path / "empty"), policy="vig", output=str(tmp_path / "x.json")),
                   **QUIET)
    # a selection whose scores and corpus are gone; two vig selections make policy=vig ambiguous
    lake = tmp_path / "orphan"
    rows = [{"sample_id": "a", "scorer_id": "s", "policy": "vig", "selection_id": sid, "params_hash": "h",
             "params": "{}", "kept": True, "reason": "vig>=tau", "token_keep": [True], "n_tokens": 1,
             "n_tokens_kept": 1, "tau": 0.0, "p": 70.0, "scores_version": 0} for sid in ("id1", "id2")]
    write_deltalake(str(lake / "selection"), pa.Table.from_pylist(rows, schema=SELECTION_SCHEMA))
    with pytest.raises(ValueError, match="single selection of policy 'vig'.*id1.*id2"):
        run_export(spark, ExportJobConfig(lake=str(lake), policy="vig", output=str(tmp_path / "x.json")), **QUIET)
    with pytest.raises(FileNotFoundError, match="no scores table"):
        run_export(spark, ExportJobConfig(lake=str(lake), selection_id="id1", output=str(tmp_path / "x.json")),
                   **QUIET)
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "x.mask.json").exists()
    for both_or_neither in ({"selection_id": "id1", "policy": "vig"}, {}):
        with pytest.raises(ValidationError, match="exactly one of selection_id and policy"):
            ExportJobConfig(output="x.json", **both_or_neither)


def test_a_failed_write_leaves_no_file_behind_and_an_earlier_export_untouched(tmp_path):
    output, sidecar = tmp_path / "out.json", tmp_path / "out.mask.json"
    output.write_text("earlier export")
    (tmp_path / "p0.records").write_text('{"id": "a", "conversations": []}')
    (tmp_path / "p0.masks").write_text('"a": []')
    parts = [Part(0, str(tmp_path / "p0.records"), str(tmp_path / "p0.masks"), 0, 0, 1),
             Part(1, str(tmp_path / "gone.records"), str(tmp_path / "gone.masks"), 0, 0, 1)]

    with pytest.raises(FileNotFoundError):
        _write_export(Storage(), str(output), str(sidecar), parts, {"format": "x"}, {})
    assert output.read_text() == "earlier export" and not sidecar.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "p0.masks", "p0.records"]


def test_parts_are_concatenated_into_one_json_array_and_one_masks_object(tmp_path):
    parts = []
    for i, ids in enumerate((["a", "b"], ["c"])):
        records, masks = tmp_path / f"p{i}.records", tmp_path / f"p{i}.masks"
        records.write_text(",\n".join(json.dumps({"id": r, "conversations": []}) for r in ids))
        masks.write_text(",\n".join(f'"{r}": [[0, 0, 1]]' for r in ids))
        parts.append(Part(i, str(records), str(masks), records.stat().st_size, masks.stat().st_size, len(ids)))
    output, sidecar = tmp_path / "out.json", tmp_path / "out.mask.json"
    _write_export(Storage(), str(output), str(sidecar), parts, {"format": "x"}, {"records": 3})
    assert [r["id"] for r in json.loads(output.read_text())] == ["a", "b", "c"]
    written = json.loads(sidecar.read_text())
    assert written["masks"] == {r: [[0, 0, 1]] for r in "abc"} and written["totals"] == {"records": 3}
    assert written["records_sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    _write_export(Storage(), str(output), str(sidecar), [], {"format": "x"}, {"records": 0})  # no parts: empty, still valid JSON
    assert json.loads(output.read_text()) == [] and json.loads(sidecar.read_text())["masks"] == {}


def test_folders_an_executor_cannot_see_are_a_clear_error(tmp_path):
    write = part_writer(str(tmp_path / "not-shared"), Storage())
    with pytest.raises(FileNotFoundError, match="staging folder .* storage that the driver and the executors share"):
        list(write(iter([])))
    write = image_writer(str(tmp_path), str(tmp_path / ".vig-export-marker"), Storage())  # no driver's marker
    with pytest.raises(FileNotFoundError, match="images folder .* storage that the driver and the executors share"):
        list(write(iter([])))


def test_a_rerun_reads_no_rows_and_no_output_unless_an_input_or_the_output_changed(spark, chain, tmp_path, monkeypatch):
    from tests.test_select_job import data_files_hidden

    import vig_udf.spark.export_job as export_job

    lake = tmp_path / "lake"
    shutil.copytree(chain["lake"], lake)
    output = tmp_path / "out" / "vig.json"
    cfg = ExportJobConfig(lake=str(lake), policy="vig", output=str(output))
    first = run_export(spark, cfg, **QUIET)
    assert not first["unchanged"]
    hashed = []
    monkeypatch.setattr(export_job, "file_sha256", lambda storage, path: hashed.append(path) or "")
    with data_files_hidden(*(lake / t for t in ("corpus", "scores", "selection"))):
        again = run_export(spark, cfg, **QUIET)  # the selection from the history, the output by its size and time
    assert again["unchanged"] and not hashed and again["records"] == first["records"]
    monkeypatch.undo()

    data = output.read_bytes()
    os.utime(output, ns=(1, 1))  # touched, same bytes: hashed, found unchanged
    assert run_export(spark, cfg, **QUIET)["unchanged"] and output.stat().st_mtime_ns == 1
    output.write_bytes(data.replace(b'"id"', b'"ID"', 1))  # edited, same size: written again
    assert not run_export(spark, cfg, **QUIET)["unchanged"] and output.read_bytes() == data
    output.unlink()  # deleted: written again
    assert not run_export(spark, cfg, **QUIET)["unchanged"] and output.read_bytes() == data
    other = run_export(spark, cfg.model_copy(update={"policy": "token"}), **QUIET)  # another selection
    assert not other["unchanged"] and other["selection_id"] == chain["selected"]["policies"]["token"]["selection_id"]
