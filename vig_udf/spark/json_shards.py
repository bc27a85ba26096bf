"""A one-array JSON file (the layout of ``llava_v1_5_mix665k.json``) cut into JSONL shards, streamed.

Spark reads a JSON array only as one ``multiLine`` record, in one task that holds the whole file. The
driver instead streams the array with ijson (one element in memory at a time) and writes its elements,
one a line, into shards of ``records_per_shard`` lines; Spark then reads the shards in parallel like any
JSONL input. Local paths are read and written with Python's file API; other URIs (``s3a://``, ``abfss://``)
go through the session's Hadoop file system, in chunks.
"""

from __future__ import annotations

import io
import json

import ijson

from vig_udf.lake.paths import has_scheme

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
    written, shard, out = 0, 0, None
    with _open_read(spark, source) as stream:
        _expect_array(stream, source)
        try:
            for element in ijson.items(stream, "item", use_float=True):
                if out is None:
                    out = _open_write(spark, f"{folder.rstrip('/')}/{SHARD_NAME.format(shard)}")
                out.write((json.dumps(element, ensure_ascii=False) + "\n").encode())
                written += 1
                if written % records_per_shard == 0:
                    out.close()
                    out, shard = None, shard + 1
        except ijson.JSONError as error:
            raise JsonArrayError(f"{source} is not a well-formed JSON array (after {written} elements): {error}; "
                                 "nothing was ingested") from error
        finally:
            if out is not None:
                out.close()
    return written


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


def _local_path(uri: str) -> str | None:
    if not has_scheme(uri):
        return uri
    if uri.startswith("file:"):
        return "/" + uri[len("file:"):].lstrip("/")
    return None


def _open_read(spark, uri: str):
    local = _local_path(uri)
    if local is not None:
        return open(local, "rb", buffering=CHUNK_BYTES)
    return io.BufferedReader(_HadoopInput(spark, uri), buffer_size=CHUNK_BYTES)


def _open_write(spark, uri: str):
    local = _local_path(uri)
    if local is not None:
        import os

        os.makedirs(os.path.dirname(local), exist_ok=True)
        return open(local, "wb", buffering=CHUNK_BYTES)
    return io.BufferedWriter(_HadoopOutput(spark, uri), buffer_size=CHUNK_BYTES)


def _hadoop(spark, uri: str):
    jvm = spark._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return jvm, path.getFileSystem(spark._jsparkSession.sessionState().newHadoopConf()), path


class _HadoopInput(io.RawIOBase):
    """A Hadoop file read through py4j, a chunk per call."""

    def __init__(self, spark, uri: str):
        _, fs, path = _hadoop(spark, uri)
        self._stream = fs.open(path)

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        data = self._stream.readNBytes(min(len(target), CHUNK_BYTES))  # a returned byte[] arrives as bytes
        target[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


class _HadoopOutput(io.RawIOBase):
    """A Hadoop file written through py4j."""

    def __init__(self, spark, uri: str):
        _, fs, path = _hadoop(spark, uri)
        self._stream = fs.create(path, False)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._stream.write(bytes(data))
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()
