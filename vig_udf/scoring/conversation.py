"""LLaVA-format conversations -> validated turns -> Hugging Face chat messages.

A LLaVA record's ``conversations`` is a list of ``{"from": "human"|"gpt", "value": str}`` with one
``<image>`` placeholder in a human turn when the record has an image (at the start or the end of the
first human turn in LLaVA-665K). The placeholder becomes an ``{"type": "image"}`` content item, so the
processor's own chat template decides how the image is written. Where the item goes is the image
placement:

- ``first`` (the default for LLaVA-format data): LLaVA-1.5's own training rule (``preprocess_multimodal``
  in the LLaVA repository): the placeholder is removed, the turn's text stripped, and the image put
  before it, so every record is rendered the way a LLaVA-1.5 model saw it in training, wherever the
  record's placeholder was.
- ``inline``: the image item stays where the placeholder was (the newline next to it dropped).
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
    """One turn. ``segments`` is the raw text split around the image placeholder (two parts if it held it)."""

    role: str
    segments: tuple[str, ...]

    @property
    def text(self) -> str:
        return "".join(self.segments)

    @property
    def has_image(self) -> bool:
        return len(self.segments) == 2


@dataclass(frozen=True)
class Conversation:
    """A validated conversation: roles normalised, the image placeholder located, answers indexed."""

    turns: tuple[Turn, ...]

    @property
    def has_image(self) -> bool:
        return any(t.has_image for t in self.turns)

    @property
    def answer_turns(self) -> list[int]:
        """Indices (into ``turns``) of the assistant turns, in order; turn index k of a token refers here."""
        return [i for i, t in enumerate(self.turns) if t.role == ASSISTANT]

    def to_messages(self, *, with_image: bool, placement: str = DEFAULT_IMAGE_PLACEMENT) -> list[dict]:
        """Chat messages in the content-list format of Hugging Face processors.

        ``with_image=False`` drops the image item (the "drop" counterfactual and text-only samples), and
        leaves the text as the placement writes it. ``placement``: one of :data:`IMAGE_PLACEMENTS`.
        """
        if placement not in IMAGE_PLACEMENTS:
            raise ValueError(f"image_placement={placement!r}; choose one of {IMAGE_PLACEMENTS}")
        messages = []
        for turn in self.turns:
            if turn.has_image and placement == "first":
                text = turn.text.strip()
                content = [{"type": "image"}] if with_image else []
                if text:
                    content.append({"type": "text", "text": text})
            elif turn.has_image:
                before, after = turn.segments
                before, after = before.rstrip("\n"), after.lstrip("\n")
                content = [{"type": "text", "text": before}] if before else []
                if with_image:
                    content.append({"type": "image"})
                if after:
                    content.append({"type": "text", "text": after})
            else:
                content = [{"type": "text", "text": turn.text}]
            messages.append({"role": turn.role, "content": content})
        return messages


def parse_conversation(conversations, *, has_image: bool) -> Conversation:
    """Validate a LLaVA ``conversations`` list and return a :class:`Conversation`.

    Raises :class:`SampleError` with status ``invalid_conversation`` (malformed turns, roles that do not
    alternate user/assistant, placeholder count not matching the image) or ``no_answer_tokens`` (no
    assistant turn with text).
    """
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
        turns.append(Turn(role, tuple(value.split(IMAGE_PLACEHOLDER)) if count == 1 else (value,)))
    _check_roles(turns)
    expected = 1 if has_image else 0
    if placeholders != expected:
        what = "an image" if has_image else "no image"
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
