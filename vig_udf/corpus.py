"""Validation of LLaVA-format records at ingest: pure functions, no Spark.

Every record becomes a corpus row; an invalid one keeps its status and a readable message. The checks
are the scorer's own (the same conversation parser and the same image-path rule,
:func:`vig_udf.scoring.images.resolve_image`): a path that stays inside the image root and names an existing file.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from vig_udf.scoring.conversation import parse_conversation
from vig_udf.scoring.images import check_image_file, image_refs, resolve_image
from vig_udf.scoring.status import IMAGE_UNREADABLE, INVALID_CONVERSATION, OK, TEXT_ONLY, SampleError

INVALID_RECORD = "invalid_record"  # not a JSON object of the LLaVA layout at all
IMAGE_KEYS = ("image", "images")  # LLaVA's image (a path, or a list of them), or LLaVA-OneVision / Mantis images
CONVERSATION_KEYS = ("conversations", "messages")  # LLaVA's turns, or Hugging Face chat messages
_SURROGATE = re.compile("[\ud800-\udfff]")


def source_of(image_path: str | None) -> str:
    """The corpus source: the image path's first folder (coco, gqa, ocr_vqa, textvqa, vg), ``text`` without one."""
    if not image_path:
        return "text"
    first = image_path.replace("\\", "/").lstrip("/").split("/", 1)
    return first[0] if len(first) == 2 else "root"


def validate_record(record_id, image_path, conversations, *, image_root: str | None,
                    check_files=True, storage=None) -> tuple[str, str | None]:
    """(status, error) of one record: ``ok``, ``text_only`` or the reason it cannot be scored. ``storage`` (a
    :class:`vig_udf.storage.Storage`) reaches images on object storage.

    ``image_path``: None, the record's one image path, or a list of them (one per ``<image>`` placeholder, in
    order; a list of one is one image). ``check_files``: check that each image file exists; a list of booleans
    says it per image (False for an image whose bytes came with the record). A problem with one image of
    several names it (``image 2 of 3: image file not found: ...``)."""
    if conversations is None:
        return INVALID_RECORD, "the record has no 'conversations' list (or it is not a list of {from, value})"
    images = image_refs(image_path)
    checks = check_files if isinstance(check_files, (list, tuple)) else [check_files] * len(images)
    try:
        parse_conversation(list(conversations), has_image=bool(images), n_images=len(images))
        for k, (path, check) in enumerate(zip(images, checks)):
            try:
                if not path:
                    raise SampleError(IMAGE_UNREADABLE, "the record gives neither a path nor bytes for it")
                full = resolve_image(path, image_root)
                if check:
                    check_image_file(full, storage)
            except SampleError as err:
                if len(images) == 1:
                    raise
                raise SampleError(err.status, f"image {k + 1} of {len(images)}: {err.message}") from None
    except SampleError as err:
        return err.status, err.message
    return (OK if images else TEXT_ONLY), None


@dataclass
class ParsedRecord:
    """One input record split into the corpus's columns.

    ``conversations`` is the raw list of turns (None when absent or not a list), ``extra`` the JSON text of the
    record's other keys in input order (None when it has none) and ``key_order`` the record's keys as they came,
    None when they are the default layout (:func:`default_keys`). ``images`` are the record's image paths in
    order (``image`` its first; an element is None where only bytes stand for it), from ``image`` or, failing
    that, ``images`` (:data:`IMAGE_KEYS`); ``image_list`` is true when they came as a JSON list. ``error``
    names a whole-record problem (invalid_record), ``text_error`` a string with a lone surrogate
    (invalid_conversation; such strings are stored with U+FFFD in its place)."""

    id: str | None = None
    image: str | None = None
    images: list = field(default_factory=list)
    image_list: bool = False
    conversations: list | None = None
    conversations_given: bool = False
    extra: str | None = None
    key_order: list[str] | None = None
    error: str | None = None
    text_error: str | None = None
    raw: str | None = field(default=None, repr=False)


def default_keys(image) -> list[str]:
    """The keys of a record in LLaVA's layout: ``id``, ``image`` (when it has one), ``conversations``."""
    return ["id", "image", "conversations"] if image else ["id", "conversations"]


def parse_record(text: str) -> ParsedRecord:
    """One record's JSON text (a JSONL line, a staged array element, or a Parquet row as JSON) -> its parts.

    ``id`` and each image path are kept as text (another JSON type as its JSON text); the images are LLaVA's
    ``image`` (a path or a list of paths) or, failing that, ``images`` (a list); ``conversations`` is LLaVA's
    ``conversations`` or, failing that, Hugging Face ``messages`` (turned into LLaVA turns by
    :func:`llava_turns`); every other key goes to ``extra``."""
    try:
        record = json.loads(text.lstrip("\ufeff"))
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return ParsedRecord(error=f"not a LLaVA record: {_clean(text)[0][:200]!r}", raw=text)
    parsed = ParsedRecord(raw=text)
    found = []
    parsed.id, bad_id = _clean(_as_text(record.get("id")))
    found.append(bad_id)
    image_key = next((k for k in IMAGE_KEYS if record.get(k) is not None), None)
    if image_key is not None:
        value = record[image_key]
        parsed.image_list = isinstance(value, list)
        for element in (value if parsed.image_list else [value]):
            path, bad_image = _clean(_as_text(_image_path(element)))
            parsed.images.append(path)
            found.append(bad_image)
        parsed.image = parsed.images[0] if parsed.images else None
    turns_key = next((k for k in CONVERSATION_KEYS if record.get(k) is not None), None)
    if turns_key is not None:
        parsed.conversations_given = True
        turns = record[turns_key]
        if isinstance(turns, list):
            parsed.conversations = llava_turns(turns) if turns_key == "messages" else turns
    extra = {k: v for k, v in record.items() if k not in ("id", image_key or "image", turns_key)}
    if extra:
        parsed.extra = json_text(extra)
    keys = list(record)
    if keys != default_keys(parsed.image):
        parsed.key_order = [_clean(k)[0] for k in keys]
    if parsed.conversations is not None:
        parsed.conversations, bad_turns = _clean_turns(parsed.conversations)
        found.append(bad_turns)
    if any(found):
        parsed.text_error = next(problem for problem in found if problem)
    return parsed


def llava_turns(messages: list) -> list:
    """Hugging Face chat ``messages`` (``role`` user/assistant/system, ``content`` a string or typed parts such as
    ``{"type": "image"}`` and ``{"type": "text", "text": ...}``) as LLaVA turns: ``from`` human/gpt/system,
    ``value`` the text with ``<image>`` where an image part was (parts joined by a newline). A message that is
    not of that shape is kept as it came, for the conversation check to report."""
    roles = {"user": "human", "assistant": "gpt", "system": "system"}
    turns = []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            turns.append(message)
            continue
        content = message.get("content")
        if isinstance(content, list) and all(_known_part(part) for part in content):
            content = "\n".join("<image>" if part["type"] == "image" else part["text"] for part in content)
        turns.append({"from": roles.get(message["role"], message["role"]), "value": content})
    return turns


def _known_part(part) -> bool:
    """An image part, or a text part with its text (Parquet gives an image part ``"text": null`` as well)."""
    return isinstance(part, dict) and (part.get("type") == "image"
                                       or part.get("type") == "text" and isinstance(part.get("text"), str))


def json_text(value) -> str:
    """``value`` as JSON text, non-ASCII characters as they are; ASCII escapes where a string holds a lone
    surrogate (which UTF-8 cannot store)."""
    text = json.dumps(value, ensure_ascii=False)
    return text if not _SURROGATE.search(text) else json.dumps(value)


def _image_path(image):
    """A Hugging Face ``datasets`` Image value (``{"bytes", "path"}``) stands for its path; others as they are."""
    return image.get("path") if isinstance(image, dict) and set(image) <= {"bytes", "path"} else image


def _as_text(value) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value)


def _clean(text: str | None) -> tuple[str | None, str | None]:
    """``text`` with each lone surrogate replaced by U+FFFD, and a message when there was one."""
    if text is None or not _SURROGATE.search(text):
        return text, None
    return _SURROGATE.sub("\ufffd", text), "the text holds a lone surrogate (an unpaired \\ud800-\\udfff escape), " \
        "which is not Unicode text"


def _clean_turns(turns: list) -> tuple[list, str | None]:
    cleaned, problem = [], None
    for k, turn in enumerate(turns):
        if isinstance(turn, dict) and isinstance(turn.get("value"), str):
            value, bad = _clean(turn["value"])
            if bad:
                turn = {**turn, "value": value}
                problem = problem or f"turn {k}: {bad}"
        cleaned.append(turn)
    return cleaned, problem


def content_id(record_id, image_path, conversations) -> str:
    """A stable id from the record's content, for records whose id is missing or not unique. ``image_path``: the
    one image path, or the list of every image's (a list of one counts as that one path)."""
    if isinstance(image_path, (list, tuple)):
        image_path = image_path[0] if len(image_path) == 1 else (list(image_path) or None)
    payload = json.dumps([record_id, image_path, conversations], sort_keys=True, default=str)
    return "h" + hashlib.sha256(payload.encode()).hexdigest()[:20]


__all__ = ["INVALID_CONVERSATION", "INVALID_RECORD", "content_id", "resolve_image", "source_of",
           "validate_record"]
