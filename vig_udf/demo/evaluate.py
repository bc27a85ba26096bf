"""Evaluation of a demo model on the test split: colour questions answered by ranking candidate answers.

For each test item, the four answers "The <shape> is <colour>." are scored by their teacher-forced
log-likelihood (the scorer's forward, :func:`vig_udf.scoring.forward.answer_logprobs`) and the most likely one is
the prediction. Ranking fixed candidates measures what the model believes without depending on free
generation. The candidates' softmax over the four summed log-likelihoods is the model's answer distribution.

Per item it returns whether the answer is right, whether it is the shape's typical colour (the language
prior), and the probability of the true colour. On prior-conflicting items the last two measure reliance on
the prior with the real image in the prompt, in distribution (docs/demo_benchmark.md, "The powered
evaluation").
"""

from __future__ import annotations

import numpy as np
import torch

from vig_udf.scoring.conversation import parse_conversation
from vig_udf.demo.world import COLOURS, TYPICAL_COLOUR, colour_answer
from vig_udf.scoring.forward import answer_logprobs
from vig_udf.scoring.inputs import InputBuilder

# per-item outcomes, one value per test item in the split's order
ITEM_OUTCOMES = ("correct", "prior_answer", "p_true")


def candidate_sequences(processor, items: list[dict]) -> list:
    """Model inputs for every (item, candidate colour), in item-major order. They depend on the processor
    only, so one set serves every model that shares it (every instruction-tuned model of the demo)."""
    builder = InputBuilder(processor)
    seqs = []
    for item in items:
        for colour in COLOURS:
            conv = parse_conversation([{"from": "human", "value": "<image>\n" + item["question"]},
                                       {"from": "gpt", "value": colour_answer(item["shape"], colour)}],
                                      has_image=True)
            seqs.append(builder.build(conv, item["image"])[0])
    return seqs


def candidate_loglikelihoods(model, pad_token_id: int, seqs: list, *, batch_size: int = 64) -> np.ndarray:
    """[items, colours]: each candidate answer's summed log-likelihood."""
    device = next(model.parameters()).device
    totals = []
    for start in range(0, len(seqs), batch_size):
        logps = answer_logprobs(model, seqs[start:start + batch_size], pad_token_id=pad_token_id, device=device,
                                dtype=torch.float32)
        totals += [float(lp.sum()) for lp in logps]
    return np.asarray(totals).reshape(-1, len(COLOURS))


def item_outcomes(loglik: np.ndarray, items: list[dict]) -> dict[str, np.ndarray]:
    """Per item: ``correct`` (the most likely candidate is the true colour), ``prior_answer`` (it is the shape's
    typical colour) and ``p_true`` (the softmax probability of the true colour over the candidates)."""
    colours = list(COLOURS)
    shifted = loglik - loglik.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    predicted = loglik.argmax(axis=1)
    truth = np.asarray([colours.index(item["answer"]) for item in items])
    typical = np.asarray([colours.index(TYPICAL_COLOUR[item["shape"]]) for item in items])
    return {"correct": (predicted == truth).astype(float), "prior_answer": (predicted == typical).astype(float),
            "p_true": probs[np.arange(len(items)), truth]}


def summarise_outcomes(outcomes: dict[str, np.ndarray], items: list[dict]) -> dict:
    """The run's metrics: accuracy on prior-consistent, prior-conflicting and all items; on prior-conflicting
    items the share answered with the typical colour and the mean probability of the true colour."""
    conflict = np.asarray([item["conflict"] for item in items], dtype=bool)
    correct = outcomes["correct"]
    return {"acc_consistent": float(correct[~conflict].mean()), "acc_conflicting": float(correct[conflict].mean()),
            "acc": float(correct.mean()), "prior_rate_conflicting": float(outcomes["prior_answer"][conflict].mean()),
            "p_true_conflicting": float(outcomes["p_true"][conflict].mean()), "test_items": len(items)}


def evaluate(model_path: str, items: list[dict], *, sequences: list | None = None) -> tuple[dict, dict]:
    """(metrics, per-item outcomes) of the model at ``model_path`` on ``items``.

    ``sequences``: the :func:`candidate_sequences` of ``items``, when already built.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path)
    if sequences is None:
        sequences = candidate_sequences(processor, items)
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32).eval()
    pad = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    outcomes = item_outcomes(candidate_loglikelihoods(model, pad, sequences), items)
    return summarise_outcomes(outcomes, items), outcomes
