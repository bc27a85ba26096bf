"""Cheap checks of a job's whole inputs, made before Spark starts and before any table is written.

A mistake that concerns the whole input (a file that is not JSON, JSON lines or Parquet, an empty input, a
JSON object instead of a list of records, an image root or a model that is not there) fails here with a
message naming the cause, instead of a traceback from inside a Spark task. Per-record problems are not
checked here: they become the rows' statuses. Inputs given as URIs (``s3a://``, ``dbfs:/``) are not
opened here; Spark reads them.
"""

from __future__ import annotations

import os

INPUT_SUFFIXES = (".json", ".jsonl", ".parquet")
COMPRESSED = (".gz", ".bz2", ".deflate", ".zst", ".lz4", ".snappy")
_PEEK_BYTES = 1 << 16


class InputError(ValueError):
    """A whole input of a job is unusable; the message says which and why."""


def check_input(path: str) -> None:
    """``path`` is a LLaVA JSON list, a JSON lines file, a Parquet file or a folder of Parquet files,
    with at least one record (a look at its first bytes or its Parquet footers)."""
    if _is_uri(path):
        return
    if not os.path.exists(path):
        raise InputError(f"input {path} does not exist")
    if os.path.isdir(path):
        _check_parquet_folder(path)
        return
    stem, suffix = os.path.splitext(path.lower())
    if suffix in COMPRESSED:  # Spark decompresses JSON lines by the file's suffix; not peeked at here
        if os.path.splitext(stem)[1] != ".jsonl":
            raise InputError(f"input {path}: a compressed input must be JSON lines (.jsonl{suffix}); a JSON list "
                             "(.json) is read as one document and must not be compressed")
        return
    if suffix not in INPUT_SUFFIXES:
        raise InputError(f"input {path} is not a .json (a JSON list of LLaVA records), .jsonl (one record per "
                         "line) or .parquet file")
    if suffix == ".parquet":
        _check_parquet_file(path)
        return
    with open(path, "rb") as f:
        head = f.read(_PEEK_BYTES).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        raise InputError(f"input {path} is empty")
    first = head[:1]
    if suffix == ".json":
        if first == b"{":
            raise InputError(f"input {path} holds a JSON object, not a list of records: give a JSON list of "
                             "LLaVA records, or one record per line in a .jsonl file")
        if first != b"[":
            raise InputError(f"input {path} is not JSON (it starts with {head[:40]!r})")
        if head[1:].lstrip(b" \t\r\n")[:1] == b"]":
            raise InputError(f"input {path} is an empty list: no records")
    elif first != b"{":
        raise InputError(f"input {path} is not JSON lines (its first line does not start a JSON object: "
                         f"{head[:40]!r})")


def check_image_root(image_root: str | None, spark=None) -> None:
    """``image_root`` is None or an existing folder: here, or with a session on a cluster, where the
    executors see it (one small task: the image root is mounted on the executors, maybe not on the driver)."""
    if image_root is None:
        return
    where = ""
    if spark is not None and not is_local(spark.sparkContext.master):
        exists, folder = spark.sparkContext.parallelize([image_root], 1).map(
            lambda root: (os.path.exists(root), os.path.isdir(root))).first()
        where = " on the executors"
    else:
        exists, folder = os.path.exists(image_root), os.path.isdir(image_root)
    if not exists:
        raise InputError(f"image_root {image_root} does not exist{where}")
    if not folder:
        raise InputError(f"image_root {image_root} is not a folder{where}")


def is_local(master: str | None) -> bool:
    """Whether a Spark master runs the executors in this process (so this machine sees what they see)."""
    return bool(master) and master.startswith("local")


def check_model_path(model_path: str | None) -> None:
    """``model_path`` is a local checkpoint folder or a well-formed Hugging Face hub id (``owner/name``)."""
    if not model_path:
        raise InputError("scorer.model_path is not set: give a HF model id or a local checkpoint folder")
    if os.path.isdir(model_path):
        return
    if os.path.exists(model_path):
        raise InputError(f"model path {model_path} is a file: give a checkpoint folder or a hub id")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_path)
    except HFValidationError as err:
        raise InputError(f"model path {model_path!r} is neither a folder nor a hub id: no such folder, and {err}") \
            from None


def _check_parquet_file(path: str) -> None:
    if _parquet_rows(path) == 0:
        raise InputError(f"input {path} is empty: its Parquet file has no rows")


def _check_parquet_folder(path: str) -> None:
    files = sorted(os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names
                   if name.endswith(".parquet") and not name.startswith((".", "_")))
    if not files:
        raise InputError(f"input folder {path} holds no .parquet files")
    if not any(_parquet_rows(file) for file in files):  # stops at the first file with rows (one footer, usually)
        raise InputError(f"input folder {path} is empty: none of its {len(files)} Parquet files has rows")


def _parquet_rows(path: str) -> int:
    """The row count in the file's Parquet footer."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
        raise InputError(f"input {path} is not a Parquet file ({err})") from None


def _is_uri(path: str) -> bool:
    return "://" in path or path.startswith("dbfs:")
