"""On a GPU: bf16 + SDPA scoring agrees with float32; pinned-memory batches and prefetch change no scores."""

import numpy as np
import pytest

from vig_udf import VIGScorer

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_bf16_on_gpu_agrees_with_float32(tiny_checkpoints, mixed_samples, family):
    fp32 = VIGScorer.from_pretrained(tiny_checkpoints[family], device="cuda", dtype="float32").score(mixed_samples)
    bf16 = VIGScorer.from_pretrained(tiny_checkpoints[family], device="cuda").score(mixed_samples)
    for a, b in zip(fp32, bf16):
        assert a.status == b.status
        if a.status == "ok":
            np.testing.assert_allclose(a.logp_with, b.logp_with, atol=0.05)
            assert abs(a.vig - b.vig) < 0.05


def test_pinned_collate_matches_and_prefetch_agrees_on_gpu(tiny_checkpoints, mixed_samples):
    import torch

    from vig_udf.scoring.forward import collate

    scorer = VIGScorer.from_pretrained(tiny_checkpoints["llava"], device="cuda", prep_workers=0)
    prepared = [item for item in scorer._prepare_chunk((mixed_samples, range(len(mixed_samples)), True)).prepared]
    seqs = [s for item in prepared for s in item.seqs]
    plain, pinned = collate(seqs, 0), collate(seqs, 0, pin_memory=True)
    assert plain.keys() == pinned.keys()
    for key in plain:
        assert pinned[key].is_pinned() and torch.equal(plain[key], pinned[key])
    off = scorer.score(mixed_samples)
    faster = scorer.options.model_copy(update={"prep_workers": 2, "prep_chunk": 2})
    on = VIGScorer(scorer.model, scorer.processor, options=faster,
                   model_ref=dict(scorer._model_ref), device=scorer.device, dtype=scorer.dtype).score(mixed_samples)
    assert [r.status for r in off] == [r.status for r in on]
    for a, b in zip(off, on):
        if a.status == "ok":
            assert abs(a.vig - b.vig) < 0.02  # bf16: other batch compositions round differently
