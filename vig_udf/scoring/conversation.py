"""LLaVA-format conversations -> validated turns -> Hugging Face chat messages.

A LLaVA record's ``conversations`` is a list of ``{"from": "human"|"gpt", "value": str}`` with one
``<image>`` placeholder in a human turn per image of the record (LLaVA-665K: one, at the start or the end of
the first human turn; LLaVA-OneVision, Mantis, LLaVA-NeXT-Interleave: several, in one turn or across turns).
Each placeholder becomes an ``{"type": "image"}`` content item, so the processor's own chat template decides
how an image is written; the k-th placeholder (in reading order) is the record's k-th image. Where the items
go is the image placement:

- ``first`` (the default for LLaVA-format data): LLaVA's own training rule (``preprocess_multimodal`` in the
  LLaVA and LLaVA-NeXT repositories): a turn's single placeholder is removed, the turn's text stripped, and
  the image put before it, so every record is rendered the way a LLaVA model saw it in training, wherever
  the record's placeholder was. A turn with several placeholders keeps them where they are (LLaVA-NeXT
  moves an image first only when the turn holds one).
- ``inline``: every image item stays where its placeholder was (the newlines next to it dropped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vig_udf.scoring.status import INVALID_CONVERSATION, NO_ANSWER_TOKENS, SampleError

IMAGE_PLACEHOLDER = "<image>"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
IMAGE_PLACEMENTS = ("first", "inline")
DEFAULT_IMAGE_PLACEMENT = "first"
USER, ASSISTANT, SYSTEM = "user", "assistant", "system"
_ROLE_NAMES = {"human": USER, "user": USER, "gpt": ASSISTANT, "assistant": ASSISTANT, "system": SYSTEM}


@dataclass(frozen=True)
class Turn:
    """One turn. ``segments`` is the raw text split around its image placeholders (n + 1 parts for n images)."""

    role: str
    segments: tuple[str, ...]

    @property
    def text(self) -> str:
        return "".join(self.segments)

    @property
    def n_images(self) -> int:
        return len(self.segments) - 1

    @property
    def has_image(self) -> bool:
        return self.n_images > 0


@dataclass(frozen=True)
class Conversation:
    """A validated conversation: roles normalised, the image placeholders located, answers indexed."""

    turns: tuple[Turn, ...]

    @property
    def n_images(self) -> int:
        return sum(t.n_images for t in self.turns)

    @property
    def has_image(self) -> bool:
        return self.n_images > 0

    @property
    def answer_turns(self) -> list[int]:
        """Indices (into ``turns``) of the assistant turns, in order; turn index k of a token refers here."""
        return [i for i, t in enumerate(self.turns) if t.role == ASSISTANT]

    def image_mask(self, with_image) -> tuple[bool, ...]:
        """``with_image`` as one flag per image of the conversation: True/False for all of them, or the flags."""
        if isinstance(with_image, bool):
            return (with_image,) * self.n_images
        mask = tuple(bool(x) for x in with_image)
        if len(mask) != self.n_images:
            raise ValueError(f"{len(mask)} image flags for a conversation with {self.n_images} images")
        return mask

    def to_messages(self, *, with_image=True, placement: str = DEFAULT_IMAGE_PLACEMENT) -> list[dict]:
        """Chat messages in the content-list format of Hugging Face processors.

        ``with_image``: True keeps every image item; False drops them all (the "drop" counterfactual and
        text-only samples); a tuple of flags, one per image, keeps those flagged (an image removed alone, for
        image attribution). The text stays as the placement writes it. ``placement``: one of
        :data:`IMAGE_PLACEMENTS`.
        """
        if placement not in IMAGE_PLACEMENTS:
            raise ValueError(f"image_placement={placement!r}; choose one of {IMAGE_PLACEMENTS}")
        mask = iter(self.image_mask(with_image))
        messages = []
        for turn in self.turns:
            kept = [next(mask) for _ in range(turn.n_images)]
            if turn.n_images == 1 and placement == "first":
                text = turn.text.strip()
                content = [{"type": "image"}] if kept[0] else []
                if text:
                    content.append({"type": "text", "text": text})
            elif turn.has_image:
                content = []
                last = len(turn.segments) - 1
                for k, segment in enumerate(turn.segments):
                    segment = segment.lstrip("\n") if k > 0 else segment
                    segment = segment.rstrip("\n") if k < last else segment
                    if segment:
                        content.append({"type": "text", "text": segment})
                    if k < last and kept[k]:
                        content.append({"type": "image"})
            else:
                content = [{"type": "text", "text": turn.text}]
            messages.append({"role": turn.role, "content": content})
        return messages


def parse_conversation(conversations, *, has_image: bool = False, n_images: int | None = None) -> Conversation:
    """Validate a LLaVA ``conversations`` list and return a :class:`Conversation`.

    ``n_images``: how many images the record has (one ``<image>`` placeholder each); None = 1 if ``has_image``
    else 0. Raises :class:`SampleError` with status ``invalid_conversation`` (malformed turns, roles that do
    not alternate user/assistant, a placeholder count not matching the images) or ``no_answer_tokens`` (no
    assistant turn with text).
    """
    expected = n_images if n_images is not None else int(bool(has_image))
    if not isinstance(conversations, (list, tuple)) or len(conversations) == 0:
        raise SampleError(INVALID_CONVERSATION, "conversations is empty or not a list")
    turns: list[Turn] = []
    placeholders = 0
    for i, raw in enumerate(conversations):
        if not isinstance(raw, dict) or not isinstance(raw.get("value"), str):
            raise SampleError(INVALID_CONVERSATION, f"turn {i} is not a {{'from', 'value': str}} dict")
        role = _ROLE_NAMES.get(str(raw.get("from", "")).lower())
        if role is None:
            raise SampleError(
                INVALID_CONVERSATION,
                f"turn {i} has unknown role {raw.get('from')!r}; expected human/gpt (or user/assistant)",
            )
        value = raw["value"]
        if _LONE_SURROGATE.search(value):
            raise SampleError(INVALID_CONVERSATION, f"turn {i}'s text holds a lone surrogate (an unpaired "
                                                    "\\ud800-\\udfff escape), which is not Unicode text")
        count = value.count(IMAGE_PLACEHOLDER)
        placeholders += count
        if count and role != USER:
            raise SampleError(INVALID_CONVERSATION, f"turn {i} ({role}) holds the {IMAGE_PLACEHOLDER} placeholder")
        turns.append(Turn(role, tuple(value.split(IMAGE_PLACEHOLDER))))
    _check_roles(turns)
    if placeholders != expected:
        what = {0: "no image", 1: "an image"}.get(expected, f"{expected} images")
        raise SampleError(
            INVALID_CONVERSATION,
            f"the sample has {what} but {placeholders} {IMAGE_PLACEHOLDER} placeholders (expected {expected})",
        )
    if not any(t.role == ASSISTANT and t.text.strip() for t in turns):
        raise SampleError(NO_ANSWER_TOKENS, "the conversation has no assistant turn with text")
    return Conversation(tuple(turns))


def _check_roles(turns: list[Turn]) -> None:
    body = turns[1:] if turns[0].role == SYSTEM else turns
    if not body:
        raise SampleError(INVALID_CONVERSATION, "the conversation has only a system turn")
    for i, turn in enumerate(body):
        expected = USER if i % 2 == 0 else ASSISTANT
        if turn.role != expected:
            raise SampleError(
                INVALID_CONVERSATION,
                f"turn roles must alternate user/assistant starting with user; got {turn.role} at position {i}",
            )
