"""Each status is produced by an input that triggers it, and a bad sample never fails the batch."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.conftest import random_image, sample
from vig_udf import VIGScorer
from vig_udf.scoring.status import ALL

GOOD = sample("good", [("What colour is it?", "Red")], random_image(64, 48, 7))


def jpeg_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def scorer(tiny_checkpoints):
    return VIGScorer.from_pretrained(tiny_checkpoints["llava"], max_length=200)


def bad_inputs(tmp_path) -> dict[str, tuple[dict, str]]:
    """id -> (record, expected status)."""
    (tmp_path / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    truncated = jpeg_bytes(random_image(64, 64, 3))
    (tmp_path / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    img = random_image(32, 32, 4)
    two_turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "Red"}]
    cases = {
        "text": (sample("text", [("Hi there", "Hello")]), "text_only"),
        "missing": ({"id": "missing", "image": str(tmp_path / "nope.jpg"), "conversations": two_turns}, "image_unreadable"),
        "corrupt": ({"id": "corrupt", "image": str(tmp_path / "corrupt.jpg"), "conversations": two_turns}, "image_unreadable"),
        "truncated_file": ({"id": "truncated_file", "image": str(tmp_path / "truncated.jpg"), "conversations": two_turns},
                           "image_unreadable"),
        "bad_bytes": ({"id": "bad_bytes", "image": b"\x00\x01", "conversations": two_turns}, "image_unreadable"),
        "empty": ({"id": "empty", "image": img, "conversations": []}, "invalid_conversation"),
        "two_placeholders": ({"id": "two_placeholders", "image": img, "conversations": [
            {"from": "human", "value": "<image>\n<image>\nWhat?"}, {"from": "gpt", "value": "Red"}]}, "invalid_conversation"),
        "placeholder_without_image": ({"id": "placeholder_without_image", "conversations": two_turns},
                                      "invalid_conversation"),
        "image_without_placeholder": ({"id": "image_without_placeholder", "image": img, "conversations": [
            {"from": "human", "value": "What?"}, {"from": "gpt", "value": "Red"}]}, "invalid_conversation"),
        "gpt_first": ({"id": "gpt_first", "image": img, "conversations": [
            {"from": "gpt", "value": "<image>\nRed"}]}, "invalid_conversation"),
        "bad_role": ({"id": "bad_role", "conversations": [{"from": "robot", "value": "x"}]}, "invalid_conversation"),
        "one_sided": ({"id": "one_sided", "image": img, "conversations": [
            {"from": "human", "value": "<image>\nWhat?"}]}, "no_answer_tokens"),
        "empty_answer": ({"id": "empty_answer", "image": img, "conversations": [
            {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "  "}]}, "no_answer_tokens"),
        "too_long": (sample("too_long", [("Describe it. " * 60, "Red")], img), "truncated"),
    }
    return cases


def test_every_failure_status_with_good_samples_alongside(scorer, tmp_path):
    cases = bad_inputs(tmp_path)
    records = [GOOD] + [record for record, _ in cases.values()] + [dict(GOOD, id="good2")]
    results = scorer.score(records)
    assert len(results) == len(records)
    by_id = {r.sample_id: r for r in results}
    for case_id, (_, expected) in cases.items():
        result = by_id[case_id]
        assert result.status == expected, (case_id, result.error)
        assert result.vig is None
        assert (result.error is None) == (expected == "text_only"), (case_id, result.error)
    assert by_id["good"].status == by_id["good2"].status == "ok"
    alone = scorer.score([GOOD])[0]
    np.testing.assert_allclose(by_id["good"].token_vig, alone.token_vig, atol=1e-5)
    assert by_id["text"].n_tokens > 0  # text-only rows keep their answer tokens for training


def test_template_that_rewrites_answers_gives_template_mismatch(tiny_checkpoints):
    upper = "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>" \
            "{% else %}{{ c['text'] | upper }}{% endif %}{% endfor %}\n{% endfor %}" \
            "{% if add_generation_prompt %}assistant: {% endif %}"
    scorer = VIGScorer.from_pretrained(tiny_checkpoints["llava"], chat_template=upper)
    result = scorer.score([GOOD])[0]
    assert result.status == "template_mismatch"
    assert "not found in the chat template" in result.error


def test_a_sample_that_breaks_the_forward_pass_fails_alone(tiny_checkpoints):
    """The model raises on a poisoned input; the batch is retried sample by sample."""
    scorer = VIGScorer.from_pretrained(tiny_checkpoints["llava"], batch_tokens=100_000)
    poison = scorer.tokenizer.convert_tokens_to_ids(scorer.tokenizer.tokenize("zebra")[0])
    inner = scorer.model.model.forward

    def failing_forward(*args, input_ids=None, **kwargs):
        if (input_ids == poison).any():
            raise RuntimeError("index out of range in self (simulated)")  # not a device error: this sample's
        return inner(*args, input_ids=input_ids, **kwargs)

    scorer.model.model.forward = failing_forward
    records = [GOOD, sample("poisoned", [("Is it a zebra?", "zebra")], random_image(40, 40, 9)),
               dict(GOOD, id="good2")]
    results = scorer.score(records)
    assert [r.status for r in results] == ["ok", "model_error", "ok"]
    assert "simulated" in results[1].error


def test_status_names_are_the_documented_ones():
    assert set(ALL) == {"ok", "text_only", "image_unreadable", "image_unsupported", "invalid_conversation", "no_answer_tokens",
                        "truncated", "template_mismatch", "model_error", "no_partner"}
