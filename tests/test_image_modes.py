"""Images as cameras and scientific tools write them: EXIF orientation (the ``exif_transpose`` option, part of the
scorer identity, defaulting per family), 32-bit float and high-range integer images; and text with lone
surrogates in the in-process scorer."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import random_image
from vig_udf import VIGScorer
from vig_udf.scoring.images import load_image
from vig_udf.scoring.options import ScorerOptions
from vig_udf.scoring.status import IMAGE_UNSUPPORTED, SampleError


def rotated_photo() -> bytes:
    """An 80x40 landscape JPEG whose EXIF says to turn it a quarter (orientation 6: shown as 40x80)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    random_image(80, 40, 1).save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def test_exif_orientation_is_applied_only_where_the_option_says():
    assert load_image(rotated_photo()).size == (80, 40)
    assert load_image(rotated_photo(), exif_transpose=True).size == (40, 80)


def test_exif_transpose_is_off_unless_asked_and_is_part_of_the_identity():
    assert ScorerOptions().for_checkpoint("idefics3", None).exif_transpose is False  # images as stored
    assert ScorerOptions(exif_transpose=True).for_checkpoint("llava", None).exif_transpose is True
    off = ScorerOptions(exif_transpose=False).identity_options()
    on = ScorerOptions(exif_transpose=True).identity_options()
    assert "exif_transpose" not in off and on["exif_transpose"] is True  # off keeps earlier scorer ids
    assert {k: v for k, v in on.items() if k != "exif_transpose"} == off


def tiff(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="TIFF")
    return buf.getvalue()


def test_float_and_high_range_images_are_scaled_or_refused():
    ramp = np.linspace(0.0, 1.0, 64 * 32, dtype=np.float32).reshape(32, 64)
    loaded = np.asarray(load_image(tiff(ramp, "F")))
    assert loaded.shape == (32, 64, 3)
    np.testing.assert_allclose(loaded[..., 0], np.round(ramp * 255), atol=1)  # not black
    with pytest.raises(SampleError, match=r"float image with values in \[0, 3\]") as refused:
        load_image(tiff(ramp * 3, "F"))
    assert refused.value.status == IMAGE_UNSUPPORTED
    nan = ramp.copy()
    nan[0, 0] = np.nan
    with pytest.raises(SampleError) as refused:
        load_image(tiff(nan, "F"))
    assert refused.value.status == IMAGE_UNSUPPORTED
    wide = (ramp * 65535).astype(np.int32)
    np.testing.assert_allclose(np.asarray(load_image(Image.fromarray(wide, "I")))[..., 0], np.round(wide / 257),
                               atol=1)
    with pytest.raises(SampleError, match="32-bit integer image") as refused:
        load_image(Image.fromarray(wide * 4, "I"))
    assert refused.value.status == IMAGE_UNSUPPORTED


def test_a_lone_surrogate_is_invalid_conversation_in_the_in_process_scorer(tiny_checkpoints):
    scorer = VIGScorer.from_pretrained(tiny_checkpoints["llava"])
    record = {"id": "s", "image": random_image(64, 64, 2), "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "bad \ud800 text"}]}
    [result] = scorer.score([record])
    assert result.status == "invalid_conversation" and "lone surrogate" in result.error
