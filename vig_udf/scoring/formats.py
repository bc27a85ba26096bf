"""Conversation formats as data: the exact prompt a checkpoint was trained on, declared rather than coded.

``prompt_format`` chooses how a conversation becomes the model's text:

- ``template``: the processor's chat template (Jinja), as Hugging Face checkpoints ship it.
- a format: a :class:`ConversationFormat`, a handful of strings rendered by :func:`render` in LLaVA's
  ``SeparatorStyle.TWO`` layout::

      {system}{sep}{user}{role_sep}{image_token}{image_sep}{question}{sep}{assistant}{role_sep}{answer}{end_of_turn}
      {user}{role_sep}{question}{sep}{assistant}{role_sep}{answer}{end_of_turn}...

  ``llava_v1`` is LLaVA's ``conv_vicuna_v1`` (``llava/conversation.py`` in haotian-liu/LLaVA), the
  conversation LLaVA-1.5 and LLaVA-1.6-vicuna were instruction-tuned with (``--version v1``): its system
  prompt, ``USER``/``ASSISTANT``, a space after the system prompt and after each question, ``</s>`` after
  each answer. A new format is one more entry of :data:`FORMATS`, or a mapping of these fields given as
  ``prompt_format`` in a config.

Rules a format follows, from LLaVA's training code (``llava/train/train.py``, ``llava/mm_utils.py``):

- the image goes first in its turn (``preprocess_multimodal``: the ``<image>`` placeholder removed, the
  text stripped, ``<image>\\n`` put before it); a turn without the image, and every answer, verbatim;
- a record's own system turn replaces the format's system prompt; an empty message is written as the
  bare role (``ASSISTANT:``) with no separator, as ``get_prompt`` does;
- tokenisation is ``tokenizer_image_token``'s: the text before and after the image token are tokenized
  separately, each with the tokenizer's special tokens, and the later part's first token (its BOS) is
  dropped when the first part starts with BOS (see :class:`vig_udf.scoring.inputs.InputBuilder`);
- training supervises each answer and the ``end_of_turn`` text after it (``preprocess_v1`` labels the
  ``</s>`` of every round).

:func:`checkpoint_defaults` gives a checkpoint's format and padding when the options leave them unset: the
ones its config declares (``vig_prompt``, which training writes into every model it saves, so a model
fine-tuned in a format is scored in it), else by family (:data:`VICUNA_CHECKPOINTS`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from vig_udf.scoring.conversation import ASSISTANT, SYSTEM, USER, Conversation
from vig_udf.scoring.masking import AnswerSpan

TEMPLATE = "template"


class ConversationFormat(BaseModel):
    """A conversation format (see the module docstring for how the fields are laid out)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("custom", description="the format's name (recorded with the scores and in training runs)")
    system: str = Field("", description="system prompt, followed by sep; '' = none (and no sep)")
    user: str = Field(description="the user's role name")
    assistant: str = Field(description="the assistant's role name")
    role_sep: str = Field(": ", description="between a role name and its message")
    sep: str = Field(" ", description="after the system prompt and after each user message")
    end_of_turn: str = Field(description="after each answer; training supervises it with the answer")
    image_token: str = Field("<image>", description="the image's text, which the processor expands into image tokens")
    image_sep: str = Field("\n", description="between the image token and the text of its turn")


# LLaVA's conv_vicuna_v1 (haotian-liu/LLaVA, llava/conversation.py): SeparatorStyle.TWO, sep " ", sep2 "</s>"
FORMATS: dict[str, ConversationFormat] = {
    "llava_v1": ConversationFormat(
        name="llava_v1",
        system="A chat between a curious user and an artificial intelligence assistant. "
               "The assistant gives helpful, detailed, and polite answers to the user's questions.",
        user="USER", assistant="ASSISTANT", role_sep=": ", sep=" ", end_of_turn="</s>",
        image_token="<image>", image_sep="\n"),
}
PROMPT_FORMATS = (TEMPLATE, *FORMATS)

# Checkpoint families whose released checkpoints were trained on a format, not on their chat template: the
# config's model_type, when the chat template speaks Vicuna's roles (USER: / ASSISTANT:), -> (format, image_pad).
# LLaVA-1.5 trained with image_aspect_ratio=pad (expand2square); LLaVA-1.6 with anyres tiling, which the
# LLaVA-NeXT processor does itself.
VICUNA_CHECKPOINTS: dict[str, tuple[str, str]] = {"llava": ("llava_v1", "square"), "llava_next": ("llava_v1", "none")}
DECLARED = "vig_prompt"  # config.json attribute: {"prompt_format": ..., "image_pad": ...} a checkpoint was trained with


def resolve_format(value) -> ConversationFormat | None:
    """The format that ``prompt_format`` names (None for ``template``); raises ValueError for an unknown name."""
    if value is None or value == TEMPLATE:
        return None
    if isinstance(value, ConversationFormat):
        return value
    if isinstance(value, dict):
        return ConversationFormat.model_validate(value)
    if value in FORMATS:
        return FORMATS[value]
    raise ValueError(f"prompt_format={value!r}; choose one of {PROMPT_FORMATS} or give a format definition "
                     f"(fields: {sorted(ConversationFormat.model_fields)})")


def describe(value) -> str | dict | None:
    """``prompt_format`` as recorded and hashed: ``template``, or the format's full definition (so that a
    changed definition is another scorer, and training renders exactly what the scores were made with)."""
    fmt = resolve_format(value)
    if fmt is None:
        return None if value is None else TEMPLATE
    return fmt.model_dump()


def format_name(value) -> str | None:
    """The name of ``prompt_format`` (``template``, a format's name; None when unset)."""
    fmt = resolve_format(value)
    return fmt.name if fmt is not None else (None if value is None else TEMPLATE)


def render(fmt: ConversationFormat, conv: Conversation, *, with_image: bool) -> tuple[str, list[AnswerSpan]]:
    """The text of ``conv`` in ``fmt`` and where each answer and its end-of-turn text are.

    An answer's span is its text stripped of surrounding whitespace (as the chat-template path locates it);
    its end-of-turn span runs from there to the end of ``fmt.end_of_turn``.
    """
    turns = list(conv.turns)
    system = fmt.system
    if turns[0].role == SYSTEM:
        system = turns.pop(0).text
    text = system + fmt.sep if system else ""
    spans: list[AnswerSpan] = []
    for turn in turns:
        message = _message(fmt, turn, with_image)
        if turn.role == USER:
            text += _role(fmt, fmt.user, message) + (fmt.sep if message else "")
            continue
        start = len(text) + len(fmt.assistant) + len(fmt.role_sep)
        text += _role(fmt, fmt.assistant, message)
        lead = len(message) - len(message.lstrip())
        answer = message.strip()
        if message:
            text += fmt.end_of_turn
        spans.append(AnswerSpan(len(spans), start + lead, start + lead + len(answer),
                                end_of_turn=len(text) if message else None))
    return text, spans


def _message(fmt: ConversationFormat, turn, with_image: bool) -> str:
    if not turn.has_image:
        return turn.text
    text = turn.text.strip()  # preprocess_multimodal: placeholder removed, stripped, image first
    if not with_image:
        return text
    return fmt.image_token + (fmt.image_sep + text if text else "")


def _role(fmt: ConversationFormat, role: str, message: str) -> str:
    return role + fmt.role_sep + message if message else role + fmt.role_sep.rstrip()


def speaks_vicuna(processor) -> bool:
    """Whether the processor's chat template writes Vicuna's ``USER: `` / ``ASSISTANT: `` roles (llava-hf's
    LLaVA-1.5 and LLaVA-1.6-vicuna checkpoints do; their Mistral and Yi-34B variants do not)."""
    if not getattr(processor, "chat_template", None):
        return False
    probe = [{"role": USER, "content": [{"type": "text", "text": "Q"}]},
             {"role": ASSISTANT, "content": [{"type": "text", "text": "A"}]}]
    try:
        text = processor.apply_chat_template(probe, tokenize=False)
    except Exception:  # a template that cannot render a plain two-turn chat is no Vicuna template
        return False
    return "USER: Q" in text and "ASSISTANT: A" in text


def checkpoint_defaults(config, processor, *, prompt_format=None,
                        image_pad: str | None = None) -> tuple[str | ConversationFormat, str]:
    """``(prompt_format, image_pad)`` for a checkpoint (its config, or its ``model_type``), filling in the
    ones left None.

    A config that declares them (``vig_prompt``, written by training) gives them. Otherwise LLaVA-1.5
    (``model_type`` llava) and LLaVA-1.6-vicuna (llava_next) checkpoints, recognised by a chat template with
    Vicuna's roles, get ``llava_v1``, every other checkpoint its ``template``; ``image_pad`` defaults to
    ``square`` for ``llava_v1`` on LLaVA-1.5 (its ``image_aspect_ratio=pad``), else ``none``.
    """
    model_type = config if isinstance(config, str) or config is None else getattr(config, "model_type", None)
    declared = {} if isinstance(config, str) or config is None else (getattr(config, DECLARED, None) or {})
    family = VICUNA_CHECKPOINTS.get(model_type or "")
    if prompt_format is None:
        prompt_format = declared.get("prompt_format")
    if prompt_format is None:
        prompt_format = family[0] if family is not None and speaks_vicuna(processor) else TEMPLATE
    if image_pad is None:
        image_pad = declared.get("image_pad")
    if image_pad is None:
        llava_v1 = format_name(prompt_format) == "llava_v1"
        image_pad = family[1] if family is not None and llava_v1 else "none"
    resolve_format(prompt_format)  # an unknown name fails here
    return prompt_format, image_pad


def declaration(prompt_format, image_pad: str) -> dict:
    """What training writes into a trained model's config (:data:`DECLARED`)."""
    return {"prompt_format": describe(prompt_format), "image_pad": image_pad}
