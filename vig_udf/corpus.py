"""Validation of LLaVA-format records at ingest: pure functions, no Spark.

Every record becomes a corpus row; an invalid one keeps its status and a readable message. The checks
are the scorer's own (the same conversation parser and the same image-path rule,
:func:`vig_udf.scoring.images.resolve_image`): a path that stays inside the image root and names an existing file.
"""

from __future__ import annotations

import hashlib
import json

from vig_udf.scoring.conversation import parse_conversation
from vig_udf.scoring.images import check_image_file, resolve_image
from vig_udf.scoring.status import INVALID_CONVERSATION, OK, TEXT_ONLY, SampleError

INVALID_RECORD = "invalid_record"  # not a JSON object of the LLaVA layout at all


def source_of(image_path: str | None) -> str:
    """The corpus source: the image path's first folder (coco, gqa, ocr_vqa, textvqa, vg), ``text`` without one."""
    if not image_path:
        return "text"
    first = image_path.replace("\\", "/").lstrip("/").split("/", 1)
    return first[0] if len(first) == 2 else "root"


def validate_record(record_id, image_path, conversations, *, image_root: str | None,
                    check_files: bool = True, storage=None) -> tuple[str, str | None]:
    """(status, error) of one record: ``ok``, ``text_only`` or the reason it cannot be scored. ``storage`` (a
    :class:`vig_udf.storage.Storage`) reaches images on object storage."""
    if conversations is None:
        return INVALID_RECORD, "the record has no 'conversations' list (or it is not a list of {from, value})"
    try:
        parse_conversation(list(conversations), has_image=bool(image_path))
        if image_path:
            full = resolve_image(image_path, image_root)
            if check_files:
                check_image_file(full, storage)
    except SampleError as err:
        return err.status, err.message
    return (OK if image_path else TEXT_ONLY), None


def content_id(record_id, image_path, conversations) -> str:
    """A stable id from the record's content, for records whose id is missing or not unique."""
    payload = json.dumps([record_id, image_path, conversations], sort_keys=True, default=str)
    return "h" + hashlib.sha256(payload.encode()).hexdigest()[:20]


__all__ = ["INVALID_CONVERSATION", "INVALID_RECORD", "content_id", "resolve_image", "source_of", "validate_record"]
