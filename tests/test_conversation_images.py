"""LLaVA conversations to chat messages, image loading and counterfactual images."""

import numpy as np
import pytest
from PIL import Image

from tests.conftest import random_image
from vig_udf.scoring.conversation import parse_conversation
from vig_udf.scoring.images import load_image, make_counterfactual
from vig_udf.scoring.status import SampleError


def test_placeholder_at_start_and_end_become_image_items_in_place_when_inline():
    start = parse_conversation([{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat"}],
                               has_image=True)
    assert start.to_messages(with_image=True)[0]["content"] == [{"type": "image"}, {"type": "text", "text": "What is it?"}]
    end = parse_conversation([{"from": "human", "value": "What is it?\n<image>"}, {"from": "gpt", "value": "A cat"}],
                             has_image=True)
    assert end.to_messages(with_image=True, placement="inline")[0]["content"] == [
        {"type": "text", "text": "What is it?"}, {"type": "image"}]
    assert end.to_messages(with_image=False, placement="inline")[0]["content"] == [{"type": "text", "text": "What is it?"}]
    assert end.answer_turns == [1]


def test_system_turn_and_multi_turn_roles():
    conv = parse_conversation([{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                               {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"},
                               {"from": "gpt", "value": "Bye"}], has_image=False)
    assert [m["role"] for m in conv.to_messages(with_image=False)] == ["system", "user", "assistant", "user", "assistant"]
    assert conv.answer_turns == [2, 4]


@pytest.mark.parametrize("turns", [
    [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}],
    [{"from": "human"}],
    ["not a dict"],
])
def test_malformed_conversations(turns):
    with pytest.raises(SampleError) as err:
        parse_conversation(turns, has_image=False)
    assert err.value.status in ("invalid_conversation", "no_answer_tokens")


def test_load_image_from_path_bytes_and_pil(tmp_path):
    img = random_image(20, 10, 0)
    img.save(tmp_path / "a.png")
    assert load_image("a.png", image_root=str(tmp_path)).size == (20, 10)
    assert load_image((tmp_path / "a.png").read_bytes()).mode == "RGB"
    assert load_image(img.convert("L")).mode == "RGB"
    with pytest.raises(SampleError, match="max_pixels"):
        load_image(img, max_pixels=100)


def test_counterfactuals_keep_size_and_remove_detail():
    img = random_image(64, 64, 1)
    pixels = np.asarray(img, dtype=np.float64)
    blurred = np.asarray(make_counterfactual(img, "blur", blur_sigma=0.1), dtype=np.float64)
    assert blurred.shape == pixels.shape
    assert blurred.std() < 0.5 * pixels.std()  # detail gone
    assert np.abs(blurred.mean(axis=(0, 1)) - pixels.mean(axis=(0, 1))).max() < 10  # colours kept
    blank = np.asarray(make_counterfactual(img, "blank"))
    assert (blank == blank[0, 0]).all()
    noise_a = make_counterfactual(img, "noise", seed_key="x")
    assert np.array_equal(np.asarray(noise_a), np.asarray(make_counterfactual(img, "noise", seed_key="x")))
    assert not np.array_equal(np.asarray(noise_a), np.asarray(make_counterfactual(img, "noise", seed_key="y")))
    with pytest.raises(ValueError):
        make_counterfactual(img, "drop")
    assert isinstance(noise_a, Image.Image)
