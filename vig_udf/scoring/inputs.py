"""Model inputs for one conversation: chat template, processor, and the answer-token mask.

Shared by the scorer and by training, so that both see the same tokens and the same mask: the same chat
template, the same image placement (:mod:`vig_udf.scoring.conversation`) and the same special tokens. A template
that writes the tokenizer's BOS itself (Idefics3/Llama 3, Gemma 3) is tokenised without the tokenizer's
special tokens, so a sequence never starts with two BOS.
"""

from __future__ import annotations

import torch

from vig_udf.scoring import status as st
from vig_udf.scoring.conversation import DEFAULT_IMAGE_PLACEMENT, IMAGE_PLACEMENTS, Conversation
from vig_udf.scoring.forward import Sequence
from vig_udf.scoring.masking import AnswerTokens, answer_tokens, render_with_answer_spans
from vig_udf.scoring.status import SampleError


class InputBuilder:
    """Turns a parsed conversation (and an image) into a :class:`Sequence` plus its answer tokens."""

    def __init__(self, processor, *, max_length: int | None = None, image_placement: str = DEFAULT_IMAGE_PLACEMENT):
        if image_placement not in IMAGE_PLACEMENTS:
            raise ValueError(f"image_placement={image_placement!r}; choose one of {IMAGE_PLACEMENTS}")
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_length = max_length
        self.image_placement = image_placement

    def render(self, conv: Conversation, *, with_image: bool):
        """The templated text and the character spans of its answers."""
        answers = [conv.turns[i].text for i in conv.answer_turns]
        messages = conv.to_messages(with_image=with_image, placement=self.image_placement)
        return render_with_answer_spans(self.processor, messages, answers)

    def writes_bos(self, text: str) -> bool:
        """Whether the rendered ``text`` already starts with the tokenizer's BOS (the template wrote it)."""
        bos = getattr(self.tokenizer, "bos_token", None)
        return bool(bos) and text.startswith(bos)

    def build(self, conv: Conversation, image=None, *, rendered=None) -> tuple[Sequence, AnswerTokens]:
        """Encode ``conv`` with ``image`` (None: no image item in the prompt).

        Raises ``truncated`` past ``max_length`` and the masking errors of :mod:`vig_udf.scoring.masking`.
        """
        text, spans = rendered or self.render(conv, with_image=image is not None)
        kwargs = {"images": [[image]]} if image is not None else {}
        if self.writes_bos(text):
            kwargs["add_special_tokens"] = False
        enc = self.processor(text=[text], return_tensors="pt", **kwargs)
        ids = enc["input_ids"][0]
        if self.max_length is not None and len(ids) > self.max_length:
            raise SampleError(st.TRUNCATED, f"the sample is {len(ids)} tokens (image included), above "
                                            f"max_length={self.max_length}; raise max_length to score it")
        tokens = answer_tokens(self.tokenizer, text, spans, ids)
        if tokens.positions.min() < 1:
            raise SampleError(st.TEMPLATE_MISMATCH, "an answer token is the first token: nothing predicts it")
        extras = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask") and torch.is_tensor(v)}
        return Sequence(ids, extras, tokens.positions), tokens
