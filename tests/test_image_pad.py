"""image_pad=square: a non-square image reaches the model as LLaVA's expand2square makes it, and so does
every counterfactual (computed on the padded image), in scoring and in training."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import random_image, sample
from vig_udf.scoring.images import make_counterfactual


def expand2square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """LLaVA's rule (llava/mm_utils.py): the image pasted centred, by (long - short) // 2, on a square of the
    background colour; a square image unchanged."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    result.paste(image, (0, (side - height) // 2) if width > height else ((side - width) // 2, 0))
    return result


def llava_background(processor) -> tuple[int, ...]:
    """LLaVA's padding colour: tuple(int(x * 255) for x in image_processor.image_mean)."""
    return tuple(int(x * 255) for x in processor.image_processor.image_mean)


@pytest.fixture
def model_inputs(monkeypatch) -> list:
    """Every sequence the scorer sends to the model, in order."""
    import vig_udf.scoring.scorer as scorer_module

    seen = []
    real = scorer_module.answer_logprobs

    def spy(model, seqs, **kwargs):
        seen.extend(seqs)
        return real(model, seqs, **kwargs)

    monkeypatch.setattr(scorer_module, "answer_logprobs", spy)
    return seen


def test_the_padding_is_expand2square_with_the_processors_mean(tiny_checkpoints):
    from transformers import AutoProcessor

    from vig_udf.scoring.images import pad_to_square, processor_fill

    processor = AutoProcessor.from_pretrained(tiny_checkpoints["llava"])
    assert processor_fill(processor) == (122, 116, 104) == llava_background(processor)  # CLIP's mean
    for size in [(64, 48), (48, 64), (61, 40), (40, 61)]:
        image = random_image(*size, seed=3)
        padded = pad_to_square(image, processor_fill(processor))
        assert np.array_equal(np.asarray(padded), np.asarray(expand2square(image, llava_background(processor))))
    wide = np.asarray(pad_to_square(random_image(64, 48, 3), (122, 116, 104)))
    assert wide.shape == (64, 64, 3) and (wide[:8] == (122, 116, 104)).all() and (wide[56:] == (122, 116, 104)).all()
    square = random_image(40, 40, 1)
    assert pad_to_square(square, (0, 0, 0)) is square


@pytest.mark.parametrize("counterfactual", ["blur", "blank", "noise"])
def test_a_padded_4_3_image_and_its_counterfactual_reach_the_model_as_llava_pads_them(
        tiny_checkpoints, model_inputs, counterfactual):
    from vig_udf import VIGScorer

    scorer = VIGScorer.from_pretrained(tiny_checkpoints["llava"], counterfactual=counterfactual)
    assert scorer.options.image_pad == "square"  # LLaVA-1.5's default
    image = random_image(64, 48, seed=5)  # 4:3
    [result] = scorer.score([sample("wide", [("What colour is the square?", "Red")], image)])
    assert result.status == "ok", result.error
    real, cf = model_inputs  # the two passes of the one sample, in this order
    padded = expand2square(image, llava_background(scorer.processor))
    expected_real = scorer.processor.image_processor(padded, return_tensors="pt")["pixel_values"]
    expected_cf = scorer.processor.image_processor(
        make_counterfactual(padded, counterfactual, seed_key="wide"), return_tensors="pt")["pixel_values"]
    assert torch.equal(real.extras["pixel_values"], expected_real)
    assert torch.equal(cf.extras["pixel_values"], expected_cf)
    # without padding the processor crops the centre: the model sees other pixels
    cropped = scorer.processor.image_processor(image, return_tensors="pt")["pixel_values"]
    assert not torch.equal(cropped, expected_real)


def test_training_pads_the_image_as_scoring_does(tiny_checkpoints):
    from transformers import AutoProcessor

    from vig_udf.scoring.inputs import InputBuilder
    from vig_udf.train.examples import build_example

    processor = AutoProcessor.from_pretrained(tiny_checkpoints["llava"])
    image = random_image(48, 64, seed=6)  # 3:4
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    record = sample("tall", [("What is at the top?", "A blue square")], image)
    row = {"sample_id": "tall", "image_path": None, "image_bytes": buf.getvalue(),
           "conversations": record["conversations"], "token_keep": None}
    padded = build_example(InputBuilder(processor, prompt_format="llava_v1", image_pad="square"), row)
    plain = build_example(InputBuilder(processor, prompt_format="llava_v1", image_pad="none"), row)
    expected = processor.image_processor(expand2square(image, llava_background(processor)),
                                         return_tensors="pt")["pixel_values"]
    assert torch.equal(padded.seq.extras["pixel_values"], expected)
    assert not torch.equal(plain.seq.extras["pixel_values"], expected)


def test_bad_padding_settings_are_refused(tiny_checkpoints):
    from pydantic import ValidationError
    from transformers import AutoProcessor

    from vig_udf.scoring.inputs import InputBuilder
    from vig_udf.scoring.options import ScorerOptions

    with pytest.raises(ValidationError, match="image_pad"):
        ScorerOptions(image_pad="round")
    with pytest.raises(ValueError, match=r"image_pad='round'; choose one of \('none', 'square'\)"):
        InputBuilder(AutoProcessor.from_pretrained(tiny_checkpoints["llava"]), image_pad="round")
    tokenizer_only = AutoProcessor.from_pretrained(tiny_checkpoints["llava"]).tokenizer
    with pytest.raises(ValueError, match="pads with the image processor's image_mean"):
        InputBuilder(tokenizer_only, image_pad="square")
