"""Every supported family: the batched scorer equals the naive two-pass computation, and batching does
not change scores. Tiny random-weight checkpoints, saved and loaded through VIGScorer.from_pretrained, each
with its default prompt format and image padding (llava and llava_next: llava_v1; llava: square padding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vig_udf import VIGScorer
from vig_udf.scoring.conversation import parse_conversation
from vig_udf.scoring.images import make_counterfactual
from vig_udf.scoring.masking import labels_for
from vig_udf.tiny import FAMILIES


def naive_logps(scorer: VIGScorer, record: dict, *, with_image: bool, image) -> tuple[np.ndarray, float]:
    """Batch size 1, full logits, one sample alone: per-token log-probs and the model's own loss (the inputs
    are the scorer's own, in its prompt format; the forward pass, the loss and the logits are the model's)."""
    conv = parse_conversation(record["conversations"], has_image=True)
    seq, tokens = scorer.inputs.build(conv, image if with_image else None)
    inputs = {"input_ids": seq.input_ids[None], "attention_mask": torch.ones_like(seq.input_ids)[None], **seq.extras}
    labels = torch.as_tensor(labels_for(seq.input_ids, tokens))[None]
    with torch.no_grad():
        out = scorer.model(**inputs, labels=labels)
    logp = torch.log_softmax(out.logits[0].float(), dim=-1)
    pos = torch.as_tensor(tokens.positions)
    token_logp = logp[pos - 1, seq.input_ids[pos]].numpy()
    return token_logp, float(out.loss)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("counterfactual", ["blur", "drop"])
def test_batched_scores_equal_naive_two_pass(tiny_checkpoints, mixed_samples, family, counterfactual):
    scorer = VIGScorer.from_pretrained(tiny_checkpoints[family], counterfactual=counterfactual, batch_tokens=100_000)
    results = scorer.score(mixed_samples)
    assert [r.sample_id for r in results] == [s["id"] for s in mixed_samples]
    for record, result in zip(mixed_samples, results):
        if "image" not in record:
            assert result.status == "text_only" and result.vig is None
            continue
        assert result.status == "ok", result.error
        image = record["image"]
        logp_with, loss_with = naive_logps(scorer, record, with_image=True, image=image)
        if counterfactual == "drop":
            logp_without, loss_without = naive_logps(scorer, record, with_image=False, image=None)
        else:  # the counterfactual of the image as the model gets it (padded where the scorer pads)
            cf = make_counterfactual(scorer.inputs.prepare_image(image), counterfactual, seed_key=record["id"])
            logp_without, loss_without = naive_logps(scorer, record, with_image=True, image=cf)
        np.testing.assert_allclose(result.logp_with, logp_with, atol=1e-4)
        np.testing.assert_allclose(result.logp_without, logp_without, atol=1e-4)
        np.testing.assert_allclose(result.token_vig, logp_with - logp_without, atol=1e-4)
        assert result.nll_with == pytest.approx(loss_with, abs=1e-4)
        assert result.nll_without == pytest.approx(loss_without, abs=1e-4)
        assert result.vig == pytest.approx(loss_without - loss_with, abs=1e-4)
        assert result.counterfactual == counterfactual


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_size_does_not_change_scores(tiny_checkpoints, mixed_samples, family):
    one = VIGScorer.from_pretrained(tiny_checkpoints[family], batch_tokens=1)  # every sample alone
    many = VIGScorer.from_pretrained(tiny_checkpoints[family], batch_tokens=100_000)  # all in one batch
    samples = mixed_samples * 2
    for a, b in zip(one.score(samples), many.score(samples)):
        assert a.status == b.status
        if a.status == "ok":
            np.testing.assert_allclose(a.logp_with, b.logp_with, atol=1e-5)
            np.testing.assert_allclose(a.logp_without, b.logp_without, atol=1e-5)
            np.testing.assert_allclose(a.token_vig, b.token_vig, atol=1e-5)


def test_logits_only_at_answer_positions(tiny_checkpoints, mixed_samples):
    scorer = VIGScorer.from_pretrained(tiny_checkpoints["llava"], batch_tokens=100_000)
    head_rows = []
    hook = scorer.model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: head_rows.append(tuple(args[0].shape)))
    try:
        results = scorer.score(mixed_samples)
    finally:
        hook.remove()
    answer_tokens_scored = sum(2 * r.n_tokens for r in results if r.status == "ok")
    assert len(head_rows) == 1 and len(head_rows[0]) == 2  # one [positions, hidden] call, no length dim
    assert head_rows[0][0] == answer_tokens_scored


def test_same_layout_counterfactual_runs_both_passes_in_one_batch(tiny_checkpoints, mixed_samples, forward_batches):
    calls = forward_batches
    image_samples = [s for s in mixed_samples if "image" in s]
    VIGScorer.from_pretrained(tiny_checkpoints["llava"], counterfactual="blur", batch_tokens=1).score(image_samples)
    assert calls == [2] * len(image_samples)  # a budget of 1 still keeps each sample's pair together
    calls.clear()
    VIGScorer.from_pretrained(tiny_checkpoints["llava"], counterfactual="drop", batch_tokens=1).score(image_samples)
    assert calls == [1] * (2 * len(image_samples))
