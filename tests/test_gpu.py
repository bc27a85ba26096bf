"""On a GPU: bf16 + SDPA scoring agrees with float32 (the CPU family tests cover the same code paths)."""

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
