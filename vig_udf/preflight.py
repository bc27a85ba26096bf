"""Cheap checks of a job's whole inputs, made before Spark starts and before any table is written.

A mistake that concerns the whole input (a file that is not JSON, JSON lines or Parquet, an empty input, a
JSON object instead of a list of records, an image root or a model that is not there) fails here with a
message naming the cause, instead of a traceback from inside a Spark task. Per-record problems are not
checked here: they become the rows' statuses. Inputs given as URIs (``s3a://``, ``dbfs:/``) are looked at
through the storage layer (:mod:`vig_udf.storage`) the same way.
"""

from __future__ import annotations

import os
import posixpath

from vig_udf.errors import InputError
from vig_udf.storage import Storage, canonical, local_path, scheme_of

__all__ = ["InputError", "check_image_root", "check_input", "check_model_path"]

INPUT_SUFFIXES = (".json", ".jsonl", ".parquet")
COMPRESSED = (".gz", ".bz2", ".deflate", ".zst", ".lz4", ".snappy")
_PEEK_BYTES = 1 << 16


def check_input(path: str, storage: Storage | None = None) -> None:
    """``path`` (a local path or URI) is a LLaVA JSON list, a JSON lines file, a Parquet file or a folder of
    Parquet files, with at least one record (a look at its first bytes or its Parquet footers)."""
    storage = storage or Storage()
    try:
        found = storage.info(path)
    except OSError as error:
        raise InputError(f"input {path} cannot be reached: {error}") from None
    if found is None:
        raise InputError(f"input {path} does not exist")
    if found.is_dir:
        _check_parquet_folder(path, storage)
        return
    stem, suffix = posixpath.splitext(canonical(path).lower())
    if suffix in COMPRESSED:  # Spark decompresses JSON lines by the file's suffix; not peeked at here
        if posixpath.splitext(stem)[1] != ".jsonl":
            raise InputError(f"input {path}: a compressed input must be JSON lines (.jsonl{suffix}); a JSON list "
                             "(.json) is read as one document and must not be compressed")
        return
    if suffix not in INPUT_SUFFIXES:
        raise InputError(f"input {path} is not a .json (a JSON list of LLaVA records), .jsonl (one record per "
                         "line) or .parquet file")
    if suffix == ".parquet":
        _check_parquet_file(path, storage)
        return
    with storage.open(path) as f:
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


def check_image_root(image_root: str | None, spark=None, storage: Storage | None = None) -> None:
    """``image_root`` is None or an existing folder: a prefix with objects for one on object storage; for a
    local path, here or, with a session on a cluster, where the executors see it (one small task: the image
    root is mounted on the executors, maybe not on the driver)."""
    if image_root is None:
        return
    where = ""
    if local_path(image_root) is None:
        try:
            found = (storage or Storage()).info(image_root)
        except OSError as error:
            raise InputError(f"image_root {image_root} cannot be reached: {error}") from None
        exists, folder = found is not None, found is not None and found.is_dir
    elif spark is not None and not _executors_share_this_machine(spark):
        from vig_udf.spark.cluster import run_on_executor

        seen = run_on_executor(spark, _folder_state, local_path(image_root))
        exists, folder = seen["exists"], seen["folder"]
        where = " on the executors"
    else:
        exists, folder = os.path.exists(local_path(image_root)), os.path.isdir(local_path(image_root))
    if not exists:
        raise InputError(f"image_root {image_root} does not exist{where}")
    if not folder:
        raise InputError(f"image_root {image_root} is not a folder{where}")


def _folder_state(path: str) -> dict:
    return {"exists": os.path.exists(path), "folder": os.path.isdir(path)}


def _executors_share_this_machine(spark) -> bool:
    from vig_udf.spark.cluster import is_local_master, master_of
    from vig_udf.lake.session_conf import is_connect

    return not is_connect(spark) and is_local_master(master_of(spark))


def is_local(master: str | None) -> bool:
    """Whether a Spark master runs the executors in this process (so this machine sees what they see)."""
    return bool(master) and master.startswith("local")


def check_model_path(model_path: str | None, storage: Storage | None = None) -> None:
    """``model_path`` is a checkpoint folder (local, or a URI on object storage) or a well-formed Hugging Face hub
    id (``owner/name``)."""
    if not model_path:
        raise InputError("scorer.model_path is not set: give a HF model id or a local checkpoint folder")
    if scheme_of(model_path) not in (None, "file"):
        try:
            found = (storage or Storage()).info(model_path)
        except OSError as error:
            raise InputError(f"model path {model_path} cannot be reached: {error}") from None
        if found is None or not found.is_dir:
            raise InputError(f"model path {model_path} is not a checkpoint folder (nothing is there, or a file)")
        return
    folder = local_path(model_path)
    if os.path.isdir(folder):
        return
    if os.path.exists(folder):
        raise InputError(f"model path {model_path} is a file: give a checkpoint folder or a hub id")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(model_path)
    except HFValidationError as err:
        raise InputError(f"model path {model_path!r} is neither a folder nor a hub id: no such folder, and {err}") \
            from None


def _check_parquet_file(path: str, storage: Storage) -> None:
    if _parquet_rows(path, storage) == 0:
        raise InputError(f"input {path} is empty: its Parquet file has no rows")
    _check_parquet_columns(path, path, storage)


def _check_parquet_columns(path: str, file: str, storage: Storage) -> None:
    """The Parquet input has a conversation column (LLaVA's ``conversations`` or Hugging Face ``messages``)."""
    import pyarrow.parquet as pq

    from vig_udf.corpus import CONVERSATION_KEYS

    with storage.open(file) as f:
        columns = pq.ParquetFile(f).schema_arrow.names
    if not set(columns) & set(CONVERSATION_KEYS):
        raise InputError(f"input {path} has no conversation column: its columns are {columns}, and one of "
                         f"{list(CONVERSATION_KEYS)} is expected (LLaVA's turns or Hugging Face chat messages)")


def _check_parquet_folder(path: str, storage: Storage) -> None:
    files = [e.uri for e in storage.files(path) if e.name.endswith(".parquet") and not e.name.startswith((".", "_"))
             and not any(part.startswith((".", "_")) for part in posixpath.relpath(e.uri, canonical(path)).split("/"))]
    if not files:
        raise InputError(f"input folder {path} holds no .parquet files")
    first = next((file for file in files if _parquet_rows(file, storage)), None)  # one footer, usually
    if first is None:
        raise InputError(f"input folder {path} is empty: none of its {len(files)} Parquet files has rows")
    _check_parquet_columns(path, first, storage)


def _parquet_rows(path: str, storage: Storage) -> int:
    """The row count in the file's Parquet footer."""
    import pyarrow.parquet as pq

    try:
        with storage.open(path) as f:
            return pq.ParquetFile(f).metadata.num_rows
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
        raise InputError(f"input {path} is not a Parquet file ({err})") from None
