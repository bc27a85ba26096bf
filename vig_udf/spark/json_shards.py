"""A one-array JSON file (the layout of ``llava_v1_5_mix665k.json``) cut into JSONL shards, streamed.

Spark reads a JSON array only as one ``multiLine`` record, in one task that holds the whole file. The
driver instead streams the array with ijson (one element in memory at a time) and writes its elements,
one a line, into shards of ``records_per_shard`` lines; Spark then reads the shards in parallel like any
JSONL input. The file and the shards are read and written through the storage layer (:mod:`vig_udf.storage`),
so the input and the lake may be local or on object storage.
"""

from __future__ import annotations

import io
import json

import ijson

from vig_udf.lake.read import lake_storage

CHUNK_BYTES = 1 << 20
SHARD_NAME = "part-{:05d}.jsonl"  # zero-padded: the shards' path order is the array's order


class JsonArrayError(ValueError):
    """The input is not one well-formed JSON array."""


def stage_json_array(spark, source: str, folder: str, *, records_per_shard: int) -> int:
    """Write the elements of the JSON array at ``source`` as JSONL shards under ``folder``; returns how many
    elements were written. An element that is not a record is written as is (ingest keeps it as an invalid
    row); a file that is not one well-formed JSON array raises :class:`JsonArrayError`."""
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be at least 1, got {records_per_shard}")
    storage = lake_storage(spark)
    written, shard = 0, None
    with io.BufferedReader(storage.open(source), CHUNK_BYTES) as stream:
        _expect_array(stream, source)
        try:
            for element in ijson.items(stream, "item", use_float=True):
                if shard is None:
                    shard = _Shard(storage, f"{folder.rstrip('/')}/{SHARD_NAME.format(written // records_per_shard)}")
                shard.write((json.dumps(element, ensure_ascii=False) + "\n").encode())
                written += 1
                if written % records_per_shard == 0:
                    shard, _ = None, shard.close()
        except ijson.JSONError as error:
            raise JsonArrayError(f"{source} is not a well-formed JSON array (after {written} elements): {error}; "
                                 "nothing was ingested") from error
        finally:
            if shard is not None:
                shard.close()
    return written


class _Shard:
    """One JSONL shard being written, in chunks of about ``CHUNK_BYTES``."""

    def __init__(self, storage, uri: str):
        self._writing = storage.write(uri)
        self._file = self._writing.__enter__()
        self._buffer = bytearray()

    def write(self, line: bytes) -> None:
        self._buffer += line
        if len(self._buffer) >= CHUNK_BYTES:
            self._file.write(bytes(self._buffer))
            self._buffer.clear()

    def close(self) -> None:
        self._file.write(bytes(self._buffer))
        self._writing.__exit__(None, None, None)


def _expect_array(stream, source: str) -> None:
    """Skip a byte-order mark and blanks, then check the first character: a LLaVA ``.json`` is one array."""
    while True:
        chunk = stream.peek(64)[:64]
        blanks = len(chunk) - len(chunk.lstrip(b"\xef\xbb\xbf \t\r\n"))
        stream.read(blanks)
        if blanks < len(chunk) or not chunk:
            break
    if chunk[blanks:blanks + 1] != b"[":
        raise JsonArrayError(f"{source}: a .json input must be one JSON array of records (the layout of "
                             "llava_v1_5_mix665k.json); write one record a line as .jsonl instead")
