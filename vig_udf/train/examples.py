"""Training examples from selected rows: model inputs plus labels on exactly the selected answer tokens.

A row of the training set (see :mod:`vig_udf.spark.train_job`) holds the corpus record (conversation and
image) and the selection's token mask over the *scorer's* answer tokens, with the scorer's token ids and
character spans. The example is built with the same :class:`~vig_udf.scoring.inputs.InputBuilder` and masking the
scorer used, so with the scorer's own processor the answer tokens are the same ones, in the same order,
and the stored mask applies as is. With another tokenizer (training a different model on a selection), the
answer tokens differ; the mask is then carried over through the stored character spans
(:mod:`vig_udf.selection.spans`) and the example is counted as ``realigned``.

The prompt is rendered with the chat template and image placement the scores were made with (the train
job reads them from the scores table's commit into the settings, the trainer applies them to the processor
and the builder), so the scored tokens and the trained tokens come from the same prompt.

Labels are the token id at kept answer positions and -100 everywhere else: unselected answer tokens and
the prompt stay in the input as context but get no loss. With ``supervise_end_of_turn`` (the training
default) the end-of-turn token that the chat template writes right after an assistant turn (``</s>``,
``<|im_end|>``, ``<end_of_utterance>``: the special token following the turn's last answer token) is
labelled too, for every turn that keeps at least one token, as LLaVA-1.5 and TRL's completion-only
training do: otherwise the model never learns to stop. The scorer's mask never contains it (it is
template, not answer text).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vig_udf.scoring.conversation import parse_conversation
from vig_udf.scoring.forward import Sequence
from vig_udf.scoring.images import load_image
from vig_udf.scoring.inputs import InputBuilder
from vig_udf.scoring.masking import AnswerTokens, labels_for
from vig_udf.selection.spans import keep_from_spans, kept_char_spans

IGNORE_INDEX = -100


@dataclass
class TrainExample:
    """One training sequence: the model input and its labels (-100 where no loss is taken)."""

    sample_id: str
    seq: Sequence
    labels: np.ndarray  # int64 [L]
    realigned: bool
    n_end_of_turn: int = 0  # labelled end-of-turn tokens (included in n_supervised)

    @property
    def n_supervised(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


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


def end_of_turn_positions(input_ids: np.ndarray, tokens: AnswerTokens, keep: np.ndarray,
                          special_ids: set[int]) -> np.ndarray:
    """Positions of the end-of-turn tokens to supervise: for each assistant turn with at least one kept token,
    the token right after the turn's last answer token when it is a special token of the tokenizer."""
    ids = np.asarray(input_ids)
    out = []
    for turn in np.unique(tokens.turn[np.asarray(keep, dtype=bool)]):
        after = int(tokens.positions[tokens.turn == turn].max()) + 1
        if after < len(ids) and int(ids[after]) in special_ids:
            out.append(after)
    return np.asarray(out, dtype=np.int64)


def build_example(builder: InputBuilder, row: dict, *, image_root: str | None = None,
                  max_image_pixels: int | None = None, supervise_end_of_turn: bool = False,
                  storage=None) -> TrainExample:
    """Model input and labels for one training-set row; raises :class:`SampleError` for a bad sample.

    supervise_end_of_turn: also label the end-of-turn token of each turn that keeps a token (see the module).
    """
    has_image = bool(row.get("image_path")) or row.get("image_bytes") is not None
    conv = parse_conversation(list(row["conversations"]), has_image=has_image)
    image = None
    if has_image:
        source = row["image_bytes"] if row.get("image_bytes") is not None else row["image_path"]
        image = load_image(source, image_root=image_root, max_pixels=max_image_pixels, storage=storage)
    seq, tokens = builder.build(conv, image)
    keep, realigned = token_keep_for(tokens, row)
    ids = seq.input_ids.numpy()
    labels = labels_for(ids, tokens, keep, ignore_index=IGNORE_INDEX)
    n_eot = 0
    if supervise_end_of_turn:
        eot = end_of_turn_positions(ids, tokens, keep, set(builder.tokenizer.all_special_ids))
        labels[eot] = ids[eot]
        n_eot = len(eot)
    return TrainExample(row["sample_id"], seq, labels, realigned, n_eot)

