"""The answer-token mask: which tokens of a templated conversation are assistant answer tokens.

This is the one masking function of the project. The scorer uses it to choose the tokens it scores, the
trainer uses it to build labels, so the tokens scored are the tokens trained.

How it works, without re-tokenising answer text:

1. The processor's chat template renders the whole conversation to one string.
2. Each assistant answer is located in that string by rendering the conversation up to that turn with
   the generation prompt (a prefix of the full string) and finding the answer text right after it.
3. The rendered string is tokenized once with character offsets; a token belongs to turn k's answer
   when its character range overlaps the answer's range. Its span inside the answer text is kept, so a
   mask can later be re-aligned to another tokenizer.
4. The processor expands image placeholders into many image tokens before the answers; the expanded ids
   are aligned to the plain tokenization from the right, and the text after the image is checked to be
   token-for-token identical.

The answer's end-of-turn token (``</s>``, ``<|im_end|>``) is not part of the mask: it is template, not
answer text, and carries no character span.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vig_udf.scoring.status import NO_ANSWER_TOKENS, TEMPLATE_MISMATCH, SampleError


@dataclass(frozen=True)
class AnswerSpan:
    """Where assistant turn ``turn`` sits in the rendered text: ``[start, end)`` characters."""

    turn: int
    start: int
    end: int


@dataclass(frozen=True)
class AnswerTokens:
    """The answer tokens of one sequence (positions index the processor's ``input_ids``)."""

    positions: np.ndarray  # int64 [n] token positions in input_ids
    token_ids: np.ndarray  # int64 [n]
    turn: np.ndarray  # int32 [n] answer-turn index (0 = first assistant turn)
    char_start: np.ndarray  # int32 [n] span of the token inside its turn's answer text
    char_end: np.ndarray  # int32 [n]

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def shifted(self, offset: int) -> "AnswerTokens":
        """The same tokens at positions moved by ``offset`` (for a sequence with a different prefix)."""
        return AnswerTokens(self.positions + offset, self.token_ids, self.turn, self.char_start, self.char_end)


def render_with_answer_spans(tokenizer, messages: list[dict], answer_texts: list[str]) -> tuple[str, list[AnswerSpan]]:
    """Render ``messages`` with the chat template and locate each assistant answer in the result.

    ``answer_texts[k]`` is the text of the k-th assistant message. Raises ``template_mismatch`` when an
    answer cannot be found where the template should have written it.
    """
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans: list[AnswerSpan] = []
    search_from = 0
    k = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        start_hint = len(prefix) if full.startswith(prefix) else search_from
        answer = answer_texts[k].strip()
        start = full.find(answer, max(start_hint, search_from))
        if start < 0 or not answer:
            raise SampleError(
                TEMPLATE_MISMATCH,
                f"assistant turn {k} ({answer[:40]!r}) was not found in the chat template's output; "
                "the template may rewrite answers (set chat_template= to one that keeps them verbatim)",
            )
        spans.append(AnswerSpan(k, start, start + len(answer)))
        search_from = start + len(answer)
        k += 1
    return full, spans


def answer_tokens(tokenizer, text: str, spans: list[AnswerSpan], input_ids) -> AnswerTokens:
    """Mark the answer tokens of ``input_ids`` (the processor's ids for ``text``, image tokens expanded).

    Raises ``no_answer_tokens`` when no token falls in an answer and ``template_mismatch`` when the ids
    after the image do not match the plain tokenization of ``text``.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    plain_ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    ids = np.asarray(input_ids, dtype=np.int64)
    positions, turns, starts, ends = [], [], [], []
    for span in spans:
        inside = (offsets[:, 0] < span.end) & (offsets[:, 1] > span.start) & (offsets[:, 1] > offsets[:, 0])
        idx = np.nonzero(inside)[0]
        positions.append(idx)
        turns.append(np.full(idx.shape, span.turn, dtype=np.int32))
        starts.append(np.clip(offsets[idx, 0] - span.start, 0, span.end - span.start))
        ends.append(np.clip(offsets[idx, 1] - span.start, 0, span.end - span.start))
    plain_pos = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
    if plain_pos.size == 0:
        raise SampleError(NO_ANSWER_TOKENS, "no token of the rendered conversation falls inside an answer")
    shift = len(ids) - len(plain_ids)
    first = int(plain_pos.min())
    if shift < 0 or first + shift < 0 or not np.array_equal(ids[first + shift:], plain_ids[first:]):
        raise SampleError(
            TEMPLATE_MISMATCH,
            "the processor's token ids after the image differ from the tokenizer's ids for the same text; "
            "the processor may add or rewrite text after the image",
        )
    pos = plain_pos + shift
    return AnswerTokens(
        positions=pos.astype(np.int64),
        token_ids=ids[pos],
        turn=np.concatenate(turns).astype(np.int32),
        char_start=np.concatenate(starts).astype(np.int32),
        char_end=np.concatenate(ends).astype(np.int32),
    )


def labels_for(input_ids, tokens: AnswerTokens, keep: np.ndarray | None = None, ignore_index: int = -100):
    """Training labels: the token id at answer positions (optionally only where ``keep``), -100 elsewhere."""
    ids = np.asarray(input_ids, dtype=np.int64)
    labels = np.full(ids.shape, ignore_index, dtype=np.int64)
    pos = tokens.positions if keep is None else tokens.positions[np.asarray(keep, dtype=bool)]
    labels[pos] = ids[pos]
    return labels
