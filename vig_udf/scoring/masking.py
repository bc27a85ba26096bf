"""The answer-token mask: which tokens of a templated conversation are assistant answer tokens.

This is the one masking function of the project. The scorer uses it to choose the tokens it scores, the
trainer uses it to build labels, so the tokens scored are the tokens trained.

How it works, without re-tokenising answer text:

1. The conversation is rendered to one string, by the processor's chat template (here) or by a
   conversation format (:mod:`vig_udf.scoring.formats`), which says where it wrote each answer.
2. With a chat template, each assistant answer is located in that string by rendering the conversation up
   to that turn with the generation prompt (a prefix of the full string) and finding the answer text right
   after it.
3. The rendered string is tokenized once with character offsets; a token belongs to turn k's answer
   when its character range overlaps the answer's range. Its span inside the answer text is kept, so a
   mask can later be re-aligned to another tokenizer.
4. The processor expands image placeholders into many image tokens before the answers; the expanded ids
   are aligned to the plain tokenization from the right, and the text after the image is checked to be
   token-for-token identical.

The answer's end-of-turn text is not part of the mask (it is template, not answer text, and is never
scored), but it is located too, for training to supervise: with a format, its ``end_of_turn`` (``</s>``
for ``llava_v1``); with a chat template, what the template writes after the answer up to and including
its first special token (the stop token: ``</s>``, ``<|im_end|>``, ``<end_of_utterance>``,
``<end_of_turn>``), and the newline the template writes right after it (ChatML's ``<|im_end|>\\n``, as TRL
and LLaMA-Factory supervise it). A template that writes no special token after an answer (llava-hf's
LLaVA-1.5 template writes a space) has no end-of-turn text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vig_udf.scoring.status import NO_ANSWER_TOKENS, TEMPLATE_MISMATCH, SampleError


@dataclass(frozen=True)
class AnswerSpan:
    """Where assistant turn ``turn`` sits in the rendered text: ``[start, end)`` characters, and its
    end-of-turn text ``[end, end_of_turn)`` (None: the rendering writes none)."""

    turn: int
    start: int
    end: int
    end_of_turn: int | None = None


@dataclass(frozen=True)
class AnswerTokens:
    """The answer tokens of one sequence (positions index the processor's ``input_ids``)."""

    positions: np.ndarray  # int64 [n] token positions in input_ids
    token_ids: np.ndarray  # int64 [n]
    turn: np.ndarray  # int32 [n] answer-turn index (0 = first assistant turn)
    char_start: np.ndarray  # int32 [n] span of the token inside its turn's answer text
    char_end: np.ndarray  # int32 [n]
    end_of_turn: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # positions of end-of-turn tokens
    end_of_turn_turn: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # their answer turn

    def __len__(self) -> int:
        return int(self.positions.shape[0])


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
        end = start + len(answer)
        turn_text = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        bound = len(turn_text) if full.startswith(turn_text) and len(turn_text) >= end else end
        spans.append(AnswerSpan(k, start, end, end_of_turn=_template_end_of_turn(full, end, bound, tokenizer)))
        search_from = end
        k += 1
    return full, spans


def _template_end_of_turn(full: str, end: int, bound: int, processor) -> int | None:
    """End of the template's end-of-turn text after an answer ending at ``end``: through the first special
    token written before ``bound`` (the end of the turn's own rendering), and a newline right after it."""
    tokenizer = getattr(processor, "tokenizer", processor)
    after = full[end:bound]
    found = [(after.find(tok), -len(tok)) for tok in special_tokens(tokenizer) if tok and tok in after]
    if not found:
        return None
    at, neg_len = min(found)
    stop = end + at - neg_len
    return stop + 1 if full[stop:stop + 1] == "\n" else stop


def special_tokens(tokenizer) -> set[str]:
    """Every special token of ``tokenizer`` (named ones and added tokens marked special)."""
    names = set(getattr(tokenizer, "all_special_tokens", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return names | {t.content for t in decoder.values() if getattr(t, "special", False)}


def answer_tokens(tokenizer, text: str, spans: list[AnswerSpan], input_ids, *,
                  shifts_before: list[tuple[int, int]] | None = None) -> AnswerTokens:
    """Mark the answer tokens of ``input_ids`` (the processor's ids for ``text``, image tokens expanded).

    The processor's ids are the plain tokenization of ``text`` with each image expanded, so a token after every
    image sits ``len(input_ids) - len(plain ids)`` further right. ``shifts_before`` is for images that come after
    an answer (a later turn's image): ``(cut, shift)`` pairs, in order of ``cut``, each saying that a token of the
    text before character ``cut`` (and after the previous cut) sits ``shift`` further right.

    Raises ``no_answer_tokens`` when no token falls in an answer and ``template_mismatch`` when the ids
    after the image do not match the plain tokenization of ``text``.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    plain_ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    ids = np.asarray(input_ids, dtype=np.int64)
    plain = tokens_at(offsets, plain_ids, spans)
    real = np.nonzero(offsets[:, 1] > offsets[:, 0])[0]
    shift = np.zeros(len(plain_ids), dtype=np.int64)
    begin = 0
    for cut, segment_shift in [*(shifts_before or []), (len(text) + 1, len(ids) - len(plain_ids))]:
        # the segment's tokens: up to the first real token at or after the cut (the next image's placeholder)
        after = real[offsets[real, 0] >= cut]
        end = int(after[0]) if after.size else len(plain_ids)
        shift[begin:end] = segment_shift
        answers = plain.positions[(plain.positions >= begin) & (plain.positions < end)]
        segment, begin = (begin, end), max(begin, end)
        if answers.size == 0:
            continue
        span = np.arange(answers.min(), segment[1])  # from its first answer token to its end, aligned
        if (segment_shift < 0 or span.min() + segment_shift < 0 or span.max() + segment_shift >= len(ids)
                or not np.array_equal(ids[span + segment_shift], plain_ids[span])):
            raise SampleError(
                TEMPLATE_MISMATCH,
                "the processor's token ids after the image differ from the tokenizer's ids for the same text; "
                "the processor may add or rewrite text after the image",
            )
    return AnswerTokens(plain.positions + shift[plain.positions], plain.token_ids, plain.turn, plain.char_start,
                        plain.char_end, plain.end_of_turn + shift[plain.end_of_turn], plain.end_of_turn_turn)


def tokens_at(offsets: np.ndarray, ids: np.ndarray, spans: list[AnswerSpan]) -> AnswerTokens:
    """The answer and end-of-turn tokens of ``ids``, whose character ``offsets`` ([n, 2]) point into the
    rendered text the ``spans`` describe. Raises ``no_answer_tokens`` when no token falls in an answer."""
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    real = offsets[:, 1] > offsets[:, 0]  # special tokens the tokenizer adds have empty offsets
    positions, turns, starts, ends, eot, eot_turn = [], [], [], [], [], []
    for span in spans:
        inside = (offsets[:, 0] < span.end) & (offsets[:, 1] > span.start) & real
        idx = np.nonzero(inside)[0]
        positions.append(idx)
        turns.append(np.full(idx.shape, span.turn, dtype=np.int32))
        starts.append(np.clip(offsets[idx, 0] - span.start, 0, span.end - span.start))
        ends.append(np.clip(offsets[idx, 1] - span.start, 0, span.end - span.start))
        if span.end_of_turn is not None:
            tail = np.nonzero((offsets[:, 0] < span.end_of_turn) & (offsets[:, 1] > span.end) & real & ~inside)[0]
            eot.append(tail)
            eot_turn.append(np.full(tail.shape, span.turn, dtype=np.int32))
    pos = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
    if pos.size == 0:
        raise SampleError(NO_ANSWER_TOKENS, "no token of the rendered conversation falls inside an answer")
    ids = np.asarray(ids, dtype=np.int64)
    return AnswerTokens(
        positions=pos.astype(np.int64),
        token_ids=ids[pos],
        turn=np.concatenate(turns).astype(np.int32),
        char_start=np.concatenate(starts).astype(np.int32),
        char_end=np.concatenate(ends).astype(np.int32),
        end_of_turn=np.concatenate(eot).astype(np.int64) if eot else np.zeros(0, np.int64),
        end_of_turn_turn=np.concatenate(eot_turn).astype(np.int32) if eot_turn else np.zeros(0, np.int32),
    )


def labels_for(input_ids, tokens: AnswerTokens, keep: np.ndarray | None = None, ignore_index: int = -100):
    """Training labels: the token id at answer positions (optionally only where ``keep``), -100 elsewhere."""
    ids = np.asarray(input_ids, dtype=np.int64)
    labels = np.full(ids.shape, ignore_index, dtype=np.int64)
    pos = tokens.positions if keep is None else tokens.positions[np.asarray(keep, dtype=bool)]
    labels[pos] = ids[pos]
    return labels
