"""No sample can fail a call, no bad input passes as ok, and whole-input mistakes fail fast (no Spark)."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest
import torch
from PIL import Image

from tests.conftest import random_image, sample
from vig_udf import VIGScorer
from vig_udf.scoring.images import load_image
from vig_udf.spark import score_udf
from vig_udf.spark.score_udf import ScorerSpec, score_batches
from vig_udf.scoring.status import SampleError

QA = [{"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Red"}]


@pytest.fixture(scope="module")
def llava(tiny_checkpoints):
    return VIGScorer.from_pretrained(tiny_checkpoints["llava"], batch_tokens=100_000)


# -- one sample's exception is its status --------------------------------------------------------------

def test_an_image_the_processor_refuses_is_image_unsupported_and_the_others_are_scored(tiny_checkpoints):
    scorer = VIGScorer.from_pretrained(tiny_checkpoints["qwen2_vl"])
    records = [sample("good", [("What colour?", "Red")], random_image(56, 56, 1)),
               {"id": "wide", "image": random_image(6000, 28, 2), "conversations": QA},
               sample("good2", [("What colour?", "Blue")], random_image(56, 84, 3))]
    results = scorer.score(records)
    assert [r.status for r in results] == ["ok", "image_unsupported", "ok"]
    assert "6000x28" in results[1].error and "aspect ratio must be smaller than 200" in results[1].error


def test_any_other_exception_while_preparing_a_sample_is_that_samples_model_error(llava, monkeypatch):
    real = llava.inputs.render

    def render(conv, **kwargs):
        if "zebra" in conv.turns[0].text:
            raise KeyError("template variable missing (simulated)")
        return real(conv, **kwargs)

    monkeypatch.setattr(llava.inputs, "render", render)
    records = [sample("a", [("What?", "Red")], random_image(32, 32, 1)),
               sample("b", [("A zebra?", "No")], random_image(32, 32, 2))]
    assert [(r.status, "simulated" in (r.error or "")) for r in llava.score(records)] == [
        ("ok", False), ("model_error", True)]


# -- one rule for a turn's value ------------------------------------------------------------------------

def test_a_turn_value_that_is_not_a_string_is_invalid_conversation_in_the_scorer(llava):
    record = {"id": "n", "image": random_image(32, 32, 1),
              "conversations": [QA[0], {"from": "gpt", "value": 42}]}
    results = llava.score([record, [1, 2]])
    assert results[0].status == "invalid_conversation" and "turn 1" in results[0].error
    assert results[1].status == "invalid_conversation" and "not a JSON object" in results[1].error


# -- 16-bit images ----------------------------------------------------------------------------------------

def _png_16bit(pixels: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand (PIL cannot write 16-bit RGB): grey (0) or RGB (2)."""
    height, width = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_16_bit_images_are_scaled_to_8_bits_not_clipped_white(tmp_path):
    gradient = np.linspace(0, 65535, 256).round().astype(np.uint16)[None, :].repeat(4, axis=0)
    expected = np.round(gradient / 257.0).astype(np.uint8)
    Image.fromarray(gradient).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    grey = np.asarray(load_image(str(tmp_path / "grey16.png")))
    assert grey.shape == (4, 256, 3)
    np.testing.assert_array_equal(grey[..., 0], expected)
    assert (grey >= 250).mean() < 0.05  # not almost entirely white
    as_int32 = Image.fromarray(gradient.astype(np.int32), "I")
    np.testing.assert_array_equal(np.asarray(load_image(as_int32))[..., 1], expected)
    rgb = np.stack([gradient, gradient // 2, 65535 - gradient], axis=-1)
    loaded = np.asarray(load_image(_png_16bit(rgb, 2)))
    np.testing.assert_allclose(loaded.astype(int), np.round(rgb / 257.0), atol=1)


# -- image paths stay inside the image root ----------------------------------------------------------------

@pytest.fixture
def image_tree(tmp_path):
    root = tmp_path / "images"
    (root / "coco").mkdir(parents=True)
    random_image(32, 32, 1).save(root / "coco" / "a.png")
    random_image(32, 32, 2).save(tmp_path / "secret.png")
    os.symlink(root / "coco" / "a.png", root / "inside.png")
    os.symlink(tmp_path / "secret.png", root / "leaves.png")
    return root


def test_image_paths_that_leave_the_root_are_refused_by_the_scorer(image_tree):
    root = str(image_tree)
    assert load_image("coco/a.png", image_root=root).size == (32, 32)
    assert load_image("inside.png", image_root=root).size == (32, 32)  # a symlink inside the root, to inside
    cases = {"../secret.png": "points outside the image root", str(image_tree.parent / "secret.png"):
             "points outside the image root", "leaves.png": "is a symlink that leaves the image root",
             "coco": "is a folder, not an image file"}
    for path, message in cases.items():
        with pytest.raises(SampleError, match=message) as err:
            load_image(path, image_root=root)
        assert err.value.status == "image_unreadable"


def test_image_paths_that_leave_the_root_are_refused_at_score_time(image_tree, monkeypatch):
    """A corpus table written by hand: the score job's rows get the message ingest gives, without a model."""
    from vig_udf.corpus import validate_record

    monkeypatch.setattr(score_udf, "worker_scorer", lambda *_: pytest.fail("nothing here should be scored"))
    paths = {"up": "../secret.png", "abs": str(image_tree.parent / "secret.png"), "link": "leaves.png"}
    rows = [{"sample_id": key, "image_path": path, "image_bytes": None, "conversations": QA, "status": "ok",
             "error": None} for key, path in paths.items()]
    spec = ScorerSpec(model_path="unused", scorer_id="s", kwargs={}, image_root=str(image_tree))
    out = pa.Table.from_batches(list(score_batches(spec)(iter([pa.RecordBatch.from_pylist(rows)])))).to_pylist()
    assert [r["status"] for r in out] == ["image_unreadable"] * 3
    for row in out:
        assert row["error"] == validate_record(row["sample_id"], paths[row["sample_id"]], QA,
                                               image_root=str(image_tree))[1]
    assert "symlink that leaves" in out[2]["error"]


# -- whole-input mistakes fail fast -------------------------------------------------------------------------

def test_whole_input_mistakes_are_named_before_anything_runs(tmp_path):
    from vig_udf.preflight import InputError, check_image_root, check_input, check_model_path

    def written(name, content):
        (tmp_path / name).write_bytes(content)
        return str(tmp_path / name)

    cases = {
        written("notes.txt", b"hello"): "is not a .json",
        written("broken.json", b"hello world"): "is not JSON",
        written("empty.jsonl", b"  \n"): "is empty",
        written("empty.json", b"[ ]"): "empty list",
        written("object.json", b'{"id": "1", "conversations": []}'): "a JSON object, not a list of records",
        written("lines.jsonl", b"[1, 2]"): "is not JSON lines",
        written("fake.parquet", b"not parquet"): "is not a Parquet file",
        str(tmp_path / "nothing.json"): "does not exist",
    }
    for path, message in cases.items():
        with pytest.raises(InputError, match=message):
            check_input(path)
    pq_empty = str(tmp_path / "empty.parquet")
    pa.parquet.write_table(pa.table({"id": pa.array([], pa.string())}), pq_empty)
    with pytest.raises(InputError, match="has no rows"):
        check_input(pq_empty)
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="holds no .parquet files"):
        check_input(str(tmp_path / "folder"))
    pa.parquet.write_table(pa.table({"id": ["1"], "conversations": ["[]"]}), str(tmp_path / "folder" / "part-0.parquet"))
    check_input(str(tmp_path / "folder"))
    check_input(written("ok.json", b'\n [{"id": "1"}]'))
    check_input(written("ok.jsonl", b'{"id": "1"}\n'))
    with pytest.raises(InputError, match="image_root .* does not exist"):
        check_image_root(str(tmp_path / "no-images"))
    with pytest.raises(InputError, match="neither a folder nor a hub id"):
        check_model_path(str(tmp_path / "no" / "such" / "model"))
    check_model_path(str(tmp_path))
    check_model_path("llava-hf/llava-1.5-7b-hf")  # a well-formed hub id (not looked up)


def test_score_file_names_the_cause_without_a_traceback(tmp_path):
    from typer.testing import CliRunner

    from vig_udf.cli import app

    (tmp_path / "object.json").write_text(json.dumps({"id": "1"}))
    runner = CliRunner()
    bad_model = runner.invoke(app, ["score-file", str(tmp_path / "object.json"), "--model", "/no/such/model",
                                    "--out", str(tmp_path / "out.jsonl")])
    assert bad_model.exit_code == 2 and "neither a folder nor a hub id" in bad_model.output
    bad_input = runner.invoke(app, ["score-file", str(tmp_path / "object.json"), "--model", str(tmp_path),
                                    "--out", str(tmp_path / "out.jsonl")])
    assert bad_input.exit_code == 2 and "not a list of records" in bad_input.output
    assert "Traceback" not in bad_model.output + bad_input.output
    assert not (tmp_path / "out.jsonl").exists()


def test_the_jobs_check_their_inputs_before_spark_starts(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import vig_udf.spark.session as session
    from vig_udf.cli import app

    monkeypatch.setattr(session, "spark_session", lambda *a, **k: pytest.fail("Spark started"))
    (tmp_path / "empty.jsonl").write_text("")
    runner = CliRunner()
    ingest = runner.invoke(app, ["ingest", f"input={tmp_path / 'empty.jsonl'}", f"lake={tmp_path / 'lake'}"])
    assert ingest.exit_code == 2 and "is empty" in ingest.output
    score = runner.invoke(app, ["score", "scorer.model_path=not a/valid id", f"lake={tmp_path / 'lake'}"])
    assert score.exit_code == 2 and "neither a folder nor a hub id" in score.output
    no_root = runner.invoke(app, ["score", f"scorer.model_path={tmp_path}", f"scorer.image_root={tmp_path / 'x'}"])
    assert no_root.exit_code == 2 and "does not exist" in no_root.output
    assert not (tmp_path / "lake").exists()


def test_vig_leaves_the_hub_offline_setting_to_the_user(monkeypatch):
    from vig_udf.cli import _logging

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _logging(False)
    assert "HF_HUB_OFFLINE" not in os.environ


# -- the device's failures are not a sample's ----------------------------------------------------------------

def _records(n: int) -> list[dict]:
    return [sample(f"s{i}", [("What colour?", "Red and blue")], random_image(32, 32, i)) for i in range(n)]


def test_out_of_memory_halves_the_batch_down_to_one_sequence(llava, monkeypatch):
    import vig_udf.scoring.scorer as scorer_module

    real = scorer_module.answer_logprobs
    sizes: list[int] = []

    def limited(model, seqs, **kwargs):  # a device that holds at most 2 sequences
        sizes.append(len(seqs))
        if len(seqs) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(model, seqs, **kwargs)

    records = _records(5)
    expected = [r.token_vig for r in llava.score(records)]
    monkeypatch.setattr(scorer_module, "answer_logprobs", limited)
    monkeypatch.setattr(llava, "batch_tokens", llava.batch_tokens)  # restored for the other tests
    results = llava.score(records)
    assert [r.status for r in results] == ["ok"] * 5
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got.token_vig, want, atol=1e-5)
    assert sizes[0] == 10 and max(sizes[1:]) < 10 and sizes.count(2) == 5
    sizes.clear()  # the next call plans under the lowered budget: no batch fails again
    assert [r.status for r in llava.score(records)] == ["ok"] * 5
    assert max(sizes) <= 4 and sizes.count(2) >= 1

    def never_fits(model, seqs, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(scorer_module, "answer_logprobs", never_fits)
    alone = llava.score(records[:2])
    assert [r.status for r in alone] == ["model_error"] * 2
    assert "out of memory with this sequence alone" in alone[0].error


def test_a_fatal_cuda_error_fails_the_call_instead_of_every_later_sample(llava, monkeypatch):
    import vig_udf.scoring.scorer as scorer_module

    def broken_device(model, seqs, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered (simulated)")

    monkeypatch.setattr(scorer_module, "answer_logprobs", broken_device)
    with pytest.raises(RuntimeError, match="device-side assert"):
        llava.score(_records(3))
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None:
        def accelerator(model, seqs, **kwargs):
            raise accelerator_error("an illegal memory access was encountered (simulated)")

        monkeypatch.setattr(scorer_module, "answer_logprobs", accelerator)
        with pytest.raises(accelerator_error):
            llava.score(_records(2))
