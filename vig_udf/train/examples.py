"""Training examples from selected rows: model inputs plus labels on exactly the selected answer tokens.

A row of the training set (see :mod:`vig_udf.spark.train_job`) holds the corpus record (conversation and
image) and the selection's token mask over the *scorer's* answer tokens, with the scorer's token ids and
character spans. The example is built with the same :class:`~vig_udf.scoring.inputs.InputBuilder` and masking the
scorer used, so with the scorer's own processor the answer tokens are the same ones, in the same order,
and the stored mask applies as is. With another tokenizer (training a different model on a selection), the
answer tokens differ; the mask is then carried over through the stored character spans
(:mod:`vig_udf.selection.spans`) and the example is counted as ``realigned``.

The prompt is rendered with the prompt format (chat template or conversation format), image placement and
image padding the scores were made with (the train job reads them from the scores table's commit into the
settings, the trainer applies them to the processor and the builder), so the scored tokens and the trained
tokens come from the same prompt.

Labels are the token id at kept answer positions and -100 everywhere else: unselected answer tokens and
the prompt stay in the input as context but get no loss. A selection made with ``token_weight=vig`` also carries
a loss weight per kept token (``token_weight``); the example then holds ``weights``, the weight of each labelled
position (the stored weight at a kept answer token, 1 at an end-of-turn token, 0 elsewhere), which the loss
applies (:func:`vig_udf.train.loss.selected_token_loss`). Weights realigned to another tokenizer are the
character-weighted means of the scorer tokens' weights (:func:`vig_udf.selection.spans.weights_from_spans`),
renormalised to mean 1 over the sample's kept tokens, as the selection made them.

With ``supervise_end_of_turn`` (the training
default) the end-of-turn text after each answer that keeps at least one token is labelled too, as
LLaVA-1.5's ``preprocess_v1`` and TRL's completion-only training do, so that the model learns to stop:
``</s>`` with ``llava_v1``, ``<|im_end|>\\n`` with a ChatML template, the template's stop token otherwise
(located by :mod:`vig_udf.scoring.masking`; a template that writes none, such as llava-hf's LLaVA-1.5
template, has nothing to supervise, and the trainer warns). The scorer's mask never contains it.

A sequence longer than ``max_length`` is cut there, as LLaVA's collator does: the tokens past the limit,
and the labels on them, are dropped, and the example counts the supervised tokens it lost
(``cut_tokens``). A cut through the image's tokens leaves nothing to train on (the model needs all of
them), and so does a cut before the first supervised token; such an example has no label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vig_udf.scoring.conversation import parse_conversation
from vig_udf.scoring.forward import Sequence
from vig_udf.scoring.images import load_image
from vig_udf.scoring.inputs import InputBuilder
from vig_udf.scoring.masking import AnswerTokens, labels_for
from vig_udf.selection.spans import keep_from_spans, kept_char_spans, weighted_char_spans, weights_from_spans

IGNORE_INDEX = -100


@dataclass
class TrainExample:
    """One training sequence: the model input and its labels (-100 where no loss is taken)."""

    sample_id: str
    seq: Sequence
    labels: np.ndarray  # int64 [L]
    realigned: bool
    n_end_of_turn: int = 0  # labelled end-of-turn tokens (included in n_supervised)
    cut_tokens: int = 0  # supervised tokens lost to max_length
    cut_reason: str | None = None  # why a cut example has no label left
    weights: np.ndarray | None = None  # float32 [L]: loss weight per position (token_weight=vig), else None

    @property
    def n_supervised(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def skip_reason(self) -> str:
        """``"status: message"`` of an example with nothing to supervise."""
        if self.cut_tokens:
            return f"truncated: {self.cut_reason or 'max_length cuts every selected token'}"
        return "no_selected_tokens: no selected token maps onto this tokenizer's tokens"


def token_keep_for(tokens: AnswerTokens, row: dict) -> tuple[np.ndarray, bool]:
    """The selected-token mask over ``tokens`` (this tokenizer's answer tokens) and whether it was realigned.

    ``row`` carries the selection's ``token_keep`` over the scorer's tokens, described by ``token_ids``,
    ``token_turn``, ``token_char_start`` and ``token_char_end``. A ``token_keep`` of None keeps every answer
    token (training without a selection, such as the demo's alignment stage).
    """
    if row.get("token_keep") is None:
        return np.ones(len(tokens), dtype=bool), False
    keep = np.asarray(row["token_keep"], dtype=bool)
    stored_ids = np.asarray(row["token_ids"], dtype=np.int64)
    if keep.shape != stored_ids.shape:
        raise ValueError(f"sample {row.get('sample_id')}: token_keep has {keep.size} entries for "
                         f"{stored_ids.size} scored tokens")
    if stored_ids.shape == tokens.token_ids.shape and np.array_equal(stored_ids, tokens.token_ids):
        return keep, False
    spans = kept_char_spans(row["token_turn"], row["token_char_start"], row["token_char_end"], keep)
    return keep_from_spans(tokens.turn, tokens.char_start, tokens.char_end, spans), True


def token_weight_for(tokens: AnswerTokens, row: dict, keep: np.ndarray, realigned: bool) -> np.ndarray | None:
    """The loss weights over ``tokens`` (this tokenizer's answer tokens, kept by ``keep``), or None for a row
    without ``token_weight`` (the hard mask: every kept token weighs 1)."""
    if row.get("token_weight") is None:
        return None
    stored = np.asarray(row["token_weight"], dtype=np.float32)
    if stored.shape != np.asarray(row["token_keep"]).shape:
        raise ValueError(f"sample {row.get('sample_id')}: token_weight has {stored.size} entries for "
                         f"{len(row['token_keep'])} token_keep entries")
    if not realigned:
        return np.where(keep, stored, 0).astype(np.float32)
    spans = weighted_char_spans(row["token_turn"], row["token_char_start"], row["token_char_end"],
                                row["token_keep"], stored)
    weights = np.where(keep, weights_from_spans(tokens.turn, tokens.char_start, tokens.char_end, spans), 0)
    mean = weights[keep].mean() if keep.any() else 0.0
    return (weights / mean if mean > 0 else weights).astype(np.float32)


def end_of_turn_positions(tokens: AnswerTokens, keep: np.ndarray) -> np.ndarray:
    """Positions of the end-of-turn tokens to supervise: those of every answer turn with a kept token."""
    kept_turns = np.unique(tokens.turn[np.asarray(keep, dtype=bool)])
    return tokens.end_of_turn[np.isin(tokens.end_of_turn_turn, kept_turns)]


def row_images(row: dict) -> list:
    """The images of a training-set row in order, each its bytes where stored, else its path: the first
    (``image_path`` / ``image_bytes``), then ``more_images``; ``[]`` for a text-only row."""
    first = row.get("image_bytes") if row.get("image_bytes") is not None else row.get("image_path")
    if first is None or first == "":
        return []
    more = [m["bytes"] if m.get("bytes") is not None else m.get("path") for m in row.get("more_images") or []]
    return [first, *more]


def build_example(builder: InputBuilder, row: dict, *, image_root: str | None = None,
                  max_image_pixels: int | None = None, supervise_end_of_turn: bool = False,
                  max_length: int | None = None, storage=None) -> TrainExample:
    """Model input and labels for one training-set row (every image of it, :func:`row_images`); raises
    :class:`SampleError` for a bad sample.

    supervise_end_of_turn: also label the end-of-turn text of each turn that keeps a token (see the module).
    max_length: cut the sequence there (see the module).
    """
    sources = row_images(row)
    conv = parse_conversation(list(row["conversations"]), has_image=bool(sources), n_images=len(sources))
    images = [load_image(source, image_root=image_root, max_pixels=max_image_pixels, storage=storage)
              for source in sources]
    seq, tokens = builder.build(conv, images if len(images) > 1 else images[0] if images else None)
    keep, realigned = token_keep_for(tokens, row)
    ids = seq.input_ids.numpy()
    labels = labels_for(ids, tokens, keep, ignore_index=IGNORE_INDEX)
    token_weight = token_weight_for(tokens, row, keep, realigned)
    weights = None
    if token_weight is not None:
        weights = np.zeros(ids.shape, dtype=np.float32)
        weights[tokens.positions[keep]] = token_weight[keep]
    n_eot = 0
    if supervise_end_of_turn:
        eot = end_of_turn_positions(tokens, keep)
        labels[eot] = ids[eot]
        n_eot = len(eot)
        if weights is not None:
            weights[eot] = 1.0
    example = TrainExample(row["sample_id"], seq, labels, realigned, n_eot, weights=weights)
    if max_length is not None and len(ids) > max_length:
        example = _cut(example, max_length, builder.image_token_ids, eot if supervise_end_of_turn else ())
    return example


def _cut(example: TrainExample, max_length: int, image_token_ids: set[int], eot) -> TrainExample:
    """``example`` cut to its first ``max_length`` tokens (LLaVA's truncation), counting the labels lost."""
    ids, labels, weights = example.seq.input_ids, example.labels, example.weights
    cut_tokens = int((labels[max_length:] != IGNORE_INDEX).sum())
    reason = None
    image_ids = np.isin(ids.numpy(), list(image_token_ids))
    if image_ids[max_length:].any():
        reason = (f"max_length={max_length} cuts through the image's tokens (the sequence is {len(ids)} tokens): "
                  "nothing of it can be trained")
        cut_tokens = int((labels != IGNORE_INDEX).sum())
        labels = np.full(max_length, IGNORE_INDEX, dtype=np.int64)
        weights = None if weights is None else np.zeros(max_length, dtype=np.float32)
    else:
        weights = None if weights is None else weights[:max_length].copy()
        labels = labels[:max_length].copy()
        if not (labels != IGNORE_INDEX).any():
            reason = f"max_length={max_length} cuts every selected token (the sequence is {len(ids)} tokens)"
    extras = {k: (v[:, :max_length] if v.dim() == 2 and v.shape[1] == len(ids) else v)
              for k, v in example.seq.extras.items()}
    positions = example.seq.positions[example.seq.positions < max_length]
    seq = Sequence(ids[:max_length], extras, positions)
    n_eot = int(np.sum(np.asarray(eot, dtype=np.int64) < max_length)) if reason is None else 0
    return TrainExample(example.sample_id, seq, labels, example.realigned, n_eot, cut_tokens, reason, weights)
