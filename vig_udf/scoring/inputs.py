"""Model inputs for one conversation: the prompt (chat template or conversation format), the image, the
processor, and the answer-token mask.

Shared by the scorer and by training, so that both see the same tokens and the same mask: the same prompt
format (:mod:`vig_udf.scoring.formats`), the same image placement (:mod:`vig_udf.scoring.conversation`), the
same image padding and the same special tokens. A template that writes the tokenizer's BOS itself
(Idefics3/Llama 3, Gemma 3) is tokenised without the tokenizer's special tokens, so a sequence never starts
with two BOS. A conversation format is tokenised as LLaVA's ``tokenizer_image_token`` does: the text before
and after the image token apart, each with the tokenizer's special tokens (the later part without its BOS),
and the processor's image tokens between them.
"""

from __future__ import annotations

import numpy as np
import torch

from vig_udf.scoring import formats
from vig_udf.scoring import status as st
from vig_udf.scoring.conversation import DEFAULT_IMAGE_PLACEMENT, IMAGE_PLACEMENTS, Conversation, parse_conversation
from vig_udf.scoring.forward import Sequence
from vig_udf.scoring.images import IMAGE_PADS, pad_to_square, processor_fill
from vig_udf.scoring.masking import AnswerTokens, answer_tokens, render_with_answer_spans, tokens_at
from vig_udf.scoring.status import SampleError

_PROBE = [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"},
          {"from": "gpt", "value": "B"}]


class InputBuilder:
    """Turns a parsed conversation (and an image) into a :class:`Sequence` plus its answer tokens.

    ``prompt_format``: ``template`` (the processor's chat template), a format name of
    :data:`vig_udf.scoring.formats.FORMATS` or a :class:`~vig_udf.scoring.formats.ConversationFormat`.
    ``image_pad``: ``square`` pads every image to a square of the processor's mean colour before anything
    else sees it (LLaVA's ``expand2square``), ``none`` leaves it as it is.
    """

    def __init__(self, processor, *, max_length: int | None = None, image_placement: str = DEFAULT_IMAGE_PLACEMENT,
                 prompt_format=formats.TEMPLATE, image_pad: str = "none"):
        if image_placement not in IMAGE_PLACEMENTS:
            raise ValueError(f"image_placement={image_placement!r}; choose one of {IMAGE_PLACEMENTS}")
        if image_pad not in IMAGE_PADS:
            raise ValueError(f"image_pad={image_pad!r}; choose one of {IMAGE_PADS}")
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_length = max_length
        self.image_placement = image_placement
        self.format = formats.resolve_format(prompt_format)
        if self.format is not None:
            _check_format(self.format, processor, image_placement)
        self.image_pad = image_pad
        self.pad_fill = processor_fill(processor) if image_pad == "square" else None

    def check_images(self, conv: Conversation) -> None:
        """Refuse a conversation with more images than the prompt format takes: a conversation format is
        LLaVA's single-image layout (``tokenizer_image_token`` around one image token), so a multi-image
        record gets ``image_unsupported``; the chat-template path leaves it to the processor."""
        if self.format is not None and conv.n_images > 1:
            raise SampleError(st.IMAGE_UNSUPPORTED, f"the sample has {conv.n_images} images, but prompt_format="
                              f"{self.format.name} takes one per sample (LLaVA-1.5's training layout); score "
                              "multi-image records with prompt_format=template (the processor's chat template "
                              "takes several)")

    def prepare_image(self, image):
        """The image as the model gets it: padded to a square with ``image_pad=square`` (a square image, or a
        padded one, is returned as it is). The scorer makes counterfactuals from this image."""
        return pad_to_square(image, self.pad_fill) if self.pad_fill is not None else image

    def render(self, conv: Conversation, *, with_image=True):
        """The prompt text and the character spans of its answers (and of their end-of-turn texts).

        ``with_image``: True (every image), False (none) or one flag per image (see
        :meth:`Conversation.to_messages`)."""
        if self.format is not None:
            self.check_images(conv)
            return formats.render(self.format, conv, with_image=all(conv.image_mask(with_image)) and conv.has_image)
        answers = [conv.turns[i].text for i in conv.answer_turns]
        messages = conv.to_messages(with_image=with_image, placement=self.image_placement)
        return render_with_answer_spans(self.processor, messages, answers)

    def end_of_turn_texts(self) -> list[str | None]:
        """The end-of-turn text written after each answer of a two-turn probe conversation (None where the
        prompt writes none): what training can supervise for the model to learn to stop."""
        try:
            text, spans = self.render(parse_conversation(_PROBE, has_image=False), with_image=False)
        except SampleError:  # a template that rewrites answers: nothing known after them
            return [None, None]
        return [text[s.end:s.end_of_turn] if s.end_of_turn is not None else None for s in spans]

    @property
    def image_token_ids(self) -> set[int]:
        """The ids of the tokens an image is expanded into (a training sequence must not be cut through them)."""
        found = {getattr(owner, "image_token_id", None) for owner in (self.processor, self.tokenizer)}
        found |= set(getattr(self.processor, "image_token_ids", None) or [])
        token = self.format.image_token if self.format is not None else getattr(self.processor, "image_token", None)
        if token:
            found.add(self.tokenizer.convert_tokens_to_ids(token))
        return {i for i in found if isinstance(i, int)}

    def writes_bos(self, text: str) -> bool:
        """Whether the rendered ``text`` already starts with the tokenizer's BOS (the template wrote it)."""
        bos = getattr(self.tokenizer, "bos_token", None)
        return bool(bos) and text.startswith(bos)

    def build(self, conv: Conversation, image=None, *, rendered=None) -> tuple[Sequence, AnswerTokens]:
        """Encode ``conv`` with ``image``: None (no image item in the prompt), one image, or a list of images
        (one per image item the prompt has; each padded here when asked). Without ``rendered``, the prompt
        has an item for every image of the conversation when images are given, none otherwise.

        Raises ``truncated`` past ``max_length`` and the masking errors of :mod:`vig_udf.scoring.masking`.
        """
        images = [] if image is None else list(image) if isinstance(image, (list, tuple)) else [image]
        text, spans = rendered or self.render(conv, with_image=bool(images))
        images = [self.prepare_image(im) for im in images]
        if self.format is not None:
            ids, extras, tokens = self._encode_format(text, spans, images[0] if images else None)
        else:
            ids, extras, tokens = self._encode_template(text, spans, images)
        if self.max_length is not None and len(ids) > self.max_length:
            raise SampleError(st.TRUNCATED, f"the sample is {len(ids)} tokens (image included), above "
                                            f"max_length={self.max_length}; raise max_length to score it")
        if tokens.positions.min() < 1:
            raise SampleError(st.TEMPLATE_MISMATCH, "an answer token is the first token: nothing predicts it")
        return Sequence(ids, extras, tokens.positions), tokens

    def _encode_template(self, text, spans, images: list):
        special = {"add_special_tokens": False} if self.writes_bos(text) else {}
        kwargs = {"images": [images], **special} if images else special
        enc = self.processor(text=[text], return_tensors="pt", **kwargs)
        ids = enc["input_ids"][0]
        tokens = answer_tokens(self.tokenizer, text, spans, ids,
                               shifts_before=self._shifts_before(text, spans, images, special))
        return ids, _extras(enc), tokens

    def _shifts_before(self, text: str, spans, images: list, special: dict) -> list[tuple[int, int]] | None:
        """For images placed after an answer (a later turn's): ``(cut, shift)`` at each such image's placeholder,
        the ids the processor writes beyond the tokenizer's for the text before it (its images expanded), found by
        running the processor on that text with those images; None when every image precedes every answer."""
        starts = self._placeholder_starts(text, len(images))
        first_answer = min(s.start for s in spans)
        if not starts or starts[-1] < first_answer:
            return None
        shifts = []
        for k, cut in enumerate(starts):
            if cut < first_answer:
                continue
            prefix = text[:cut]
            kwargs = {"images": [images[:k]], **special} if k else special
            expanded = len(self.processor(text=[prefix], return_tensors="pt", **kwargs)["input_ids"][0])
            shifts.append((cut, expanded - len(self.tokenizer(prefix, add_special_tokens=False)["input_ids"])))
        return shifts

    def _placeholder_starts(self, text: str, n_images: int) -> list[int]:
        """Where the chat template wrote each image in ``text``: the processor's image-start or image token, the
        first that occurs once per image ([] when none does)."""
        for token in (getattr(self.processor, "boi_token", None), getattr(self.processor, "image_token", None)):
            if token and text.count(token) == n_images:
                starts, at = [], text.find(token)
                while at >= 0:
                    starts.append(at)
                    at = text.find(token, at + len(token))
                return starts
        return []

    def _encode_format(self, text, spans, image):
        """``tokenizer_image_token``'s ids: the text around the image token tokenized apart, the processor's
        image tokens (as many as it expands the image into) between them, and the processor's image tensors."""
        tok = self.tokenizer
        if image is None:
            enc = tok(text, return_offsets_mapping=True)
            ids, offsets, extras = enc["input_ids"], enc["offset_mapping"], {}
        else:
            enc = self.processor(text=[text], images=[[image]], return_tensors="pt")
            image_id = tok.convert_tokens_to_ids(self.format.image_token)
            n_image = int((enc["input_ids"][0] == image_id).sum())
            extras = _extras(enc)
            aligned = [k for k, v in extras.items() if v.dim() == 2 and v.shape[1] == enc["input_ids"].shape[1]]
            if aligned:
                raise ValueError(f"prompt_format={self.format.name} cannot be used with this processor: it returns "
                                 f"per-token inputs {aligned} for its own tokenisation; use prompt_format=template")
            cut = text.index(self.format.image_token)
            head = tok(text[:cut], return_offsets_mapping=True)
            tail = tok(text[cut + len(self.format.image_token):], return_offsets_mapping=True)
            drop = 1 if head["input_ids"] and head["input_ids"][0] == tok.bos_token_id else 0
            base = cut + len(self.format.image_token)
            ids = head["input_ids"] + [image_id] * n_image + tail["input_ids"][drop:]
            offsets = (list(head["offset_mapping"]) + [(cut, cut)] * n_image
                       + [(a + base, b + base) for a, b in tail["offset_mapping"][drop:]])
        ids = np.asarray(ids, dtype=np.int64)
        tokens = tokens_at(np.asarray(offsets, dtype=np.int64), ids, spans)
        return torch.as_tensor(ids), extras, tokens


def _extras(enc) -> dict[str, torch.Tensor]:
    return {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask") and torch.is_tensor(v)}


def _check_format(fmt, processor, image_placement: str) -> None:
    """A format puts the image first (LLaVA's rule) and writes the image as the processor expects it."""
    if image_placement != "first":
        raise ValueError(f"prompt_format={fmt.name} puts the image first in its turn (LLaVA's preprocess_multimodal); "
                         f"image_placement={image_placement!r} applies to prompt_format=template only")
    expected = getattr(processor, "image_token", None)
    if expected is not None and expected != fmt.image_token:
        raise ValueError(f"prompt_format={fmt.name} writes the image as {fmt.image_token!r}, but this processor "
                         f"({type(processor).__name__}) expands {expected!r}: the format is not this model's; use "
                         "prompt_format=template or a format with its image token")

