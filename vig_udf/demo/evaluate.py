"""Evaluation of a demo model on the test split: colour questions answered by ranking candidate answers.

For each test item, the four answers "The <shape> is <colour>." are scored by their teacher-forced
log-likelihood (the scorer's forward, :func:`vig_udf.forward.answer_logprobs`) and the most likely one is
the prediction. Ranking fixed candidates measures what the model believes without depending on free
generation. Run once with the real test image and once with its blurred counterfactual ("blind").
"""

from __future__ import annotations

import numpy as np
import torch

from vig_udf.conversation import parse_conversation
from vig_udf.demo.world import COLOURS, TYPICAL_COLOUR, colour_answer
from vig_udf.forward import answer_logprobs
from vig_udf.images import make_counterfactual
from vig_udf.inputs import InputBuilder


def candidate_sequences(processor, items: list[dict], *, blur_sigma: float | None = None) -> list:
    """Model inputs for every (item, candidate colour), in item-major order, with the image blurred by
    ``blur_sigma`` when given. They depend on the processor only, so one set serves every model that
    shares it (every instruction-tuned model of the demo)."""
    builder = InputBuilder(processor)
    seqs = []
    for item in items:
        image = item["image"] if blur_sigma is None else make_counterfactual(
            item["image"], "blur", blur_sigma=blur_sigma)
        for colour in COLOURS:
            conv = parse_conversation([{"from": "human", "value": "<image>\n" + item["question"]},
                                       {"from": "gpt", "value": colour_answer(item["shape"], colour)}],
                                      has_image=True)
            seqs.append(builder.build(conv, image)[0])
    return seqs


def predict_colours(model, pad_token_id: int, seqs: list, *, batch_size: int = 64) -> list[str]:
    """The most likely colour for each item, from its candidates' summed answer log-probabilities."""
    colours = list(COLOURS)
    device = next(model.parameters()).device
    totals = []
    for start in range(0, len(seqs), batch_size):
        logps = answer_logprobs(model, seqs[start:start + batch_size], pad_token_id=pad_token_id, device=device,
                                dtype=torch.float32)
        totals += [float(lp.sum()) for lp in logps]
    scores = np.asarray(totals).reshape(-1, len(colours))
    return [colours[i] for i in scores.argmax(axis=1)]


def evaluate(model_path: str, items: list[dict], *, blur_sigma: float, sequences: tuple | None = None) -> dict:
    """Accuracy on prior-consistent and prior-conflicting items, the bias gap, and blind accuracy.

    ``sequences``: the (seen, blind) :func:`candidate_sequences` of ``items``, when already built.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path)
    if sequences is None:
        sequences = (candidate_sequences(processor, items),
                     candidate_sequences(processor, items, blur_sigma=blur_sigma))
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32).eval()
    pad = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    seen, blind = (predict_colours(model, pad, seqs) for seqs in sequences)
    truth = np.asarray([item["answer"] for item in items])
    conflict = np.asarray([item["conflict"] for item in items], dtype=bool)
    typical = np.asarray([TYPICAL_COLOUR[item["shape"]] for item in items])
    correct, blind_correct = np.asarray(seen) == truth, np.asarray(blind) == truth
    consistent_acc, conflicting_acc = float(correct[~conflict].mean()), float(correct[conflict].mean())
    return {
        "acc_consistent": consistent_acc, "acc_conflicting": conflicting_acc,
        "bias_gap": consistent_acc - conflicting_acc, "acc": float(correct.mean()),
        "blind_acc": float(blind_correct.mean()),
        "blind_prior_rate": float((np.asarray(blind)[conflict] == typical[conflict]).mean()),
        "test_items": len(items),
    }
