"""The public scorer API: options, identity, counterfactual kinds."""

import pytest

from tests.conftest import random_image, sample
from vig_udf import VIGScorer


def test_scorer_id_tracks_what_changes_scores(tiny_checkpoints):
    path = tiny_checkpoints["llava"]
    base = VIGScorer.from_pretrained(path).scorer_id
    assert VIGScorer.from_pretrained(path, batch_tokens=17).scorer_id == base
    assert VIGScorer.from_pretrained(path, counterfactual="drop").scorer_id != base
    assert VIGScorer.from_pretrained(path, blur_sigma=0.2).scorer_id != base
    assert VIGScorer.from_pretrained(path, max_length=64).scorer_id != base
    assert VIGScorer.from_pretrained(path, dtype="bfloat16").scorer_id != base


@pytest.mark.parametrize("counterfactual", ["blank", "noise"])
def test_other_counterfactuals_score(tiny_checkpoints, counterfactual):
    scorer = VIGScorer.from_pretrained(tiny_checkpoints["qwen2_vl"], counterfactual=counterfactual)
    result = scorer.score([sample("a", [("What is it?", "A red square")], random_image(60, 60, 0))])[0]
    assert result.status == "ok" and result.counterfactual == counterfactual
    assert result.n_tokens == len(result.token_vig) > 0


def test_bad_options_fail_early_with_a_clear_message(tiny_checkpoints):
    with pytest.raises(ValueError, match="choose one of"):
        VIGScorer.from_pretrained(tiny_checkpoints["llava"], counterfactual="mask")
    with pytest.raises(ValueError, match=r"image_placement='last'; choose one of \('first', 'inline'\)"):
        VIGScorer.from_pretrained(tiny_checkpoints["llava"], image_placement="last")
    with pytest.raises(TypeError, match="unknown scorer options"):
        VIGScorer.from_pretrained(tiny_checkpoints["llava"], blur=3)


def test_image_paths_resolve_against_image_root(tiny_checkpoints, tmp_path):
    (tmp_path / "coco").mkdir()
    random_image(48, 48, 5).save(tmp_path / "coco" / "1.jpg")
    scorer = VIGScorer.from_pretrained(tiny_checkpoints["llava"], image_root=str(tmp_path))
    result = scorer.score([sample("1", [("What?", "Red")], "coco/1.jpg")])[0]
    assert result.status == "ok", result.error


def test_retrained_weights_at_the_same_path_change_the_scorer_id(tmp_path):
    from vig_udf.scoring.identity import model_fingerprint
    from vig_udf.tiny import build_tiny_checkpoint

    build_tiny_checkpoint("llava", tmp_path / "m", seed=1)
    first = model_fingerprint(str(tmp_path / "m"))
    assert model_fingerprint(str(tmp_path / "m")) == first
    build_tiny_checkpoint("llava", tmp_path / "m", seed=2)
    assert model_fingerprint(str(tmp_path / "m")) != first
