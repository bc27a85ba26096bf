"""Data files: where a table lives, and how one Spark task writes its Parquet files into it.

Runs on executors (``write_task_files``) and on the driver (listing and deleting a write's files).
File names carry the write's id, ``part-<write_id>-<random>.parquet``, so that the driver can find and
delete every file of a failed or superseded write attempt, even one that no task reported.

Limitation: a task attempt that is still running after the driver committed or aborted (speculative
execution, a lost executor that keeps going) can leave a file that no commit references. Readers never
see it (they read only committed files); ``files_of_write`` finds it by name.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from vig_udf.lake.schema import partition_folder, partition_value
from vig_udf.lake.stats import FileStats

COMPRESSION = "zstd"
LOG_FOLDER = "_delta_log"


def table_uri(path) -> str:
    """A table location as delta-rs and Spark both accept it: local paths made absolute."""
    text = os.fspath(path)
    if "://" not in text and not text.startswith("file:"):
        text = os.path.abspath(text)
    return text.rstrip("/")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The Arrow file system of a table location, and the location's path in it."""
    return pafs.FileSystem.from_uri(uri)


@dataclass
class DataFile:
    """One Parquet file a task wrote: what the driver needs for its Delta ``add`` action."""

    path: str  # relative to the table root, as on disk (delta-rs URI-encodes it in the log)
    size: int
    modification_time: int  # milliseconds since the epoch
    partition_values: dict[str, str | None]
    num_records: int
    stats: str


def _file_name(write_id: str) -> str:
    return f"part-{write_id}-{uuid.uuid4().hex}.parquet"


class _OpenFile:
    def __init__(self, fs: pafs.FileSystem, root: str, relative: str, schema: pa.Schema, partition: dict):
        self.fs, self.full, self.relative, self.partition = fs, f"{root}/{relative}", relative, partition
        fs.create_dir(self.full.rsplit("/", 1)[0], recursive=True)
        self.stats = FileStats(schema)
        self.writer = pq.ParquetWriter(self.full, schema, filesystem=fs, compression=COMPRESSION)

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch)
        self.stats.update(batch)

    def close(self) -> DataFile:
        self.writer.close()
        info = self.fs.get_file_info(self.full)
        return DataFile(
            path=self.relative,
            size=info.size,
            modification_time=info.mtime_ns // 1_000_000,
            partition_values=self.partition,
            num_records=self.stats.num_records,
            stats=self.stats.to_json(),
        )

    def discard(self) -> None:
        try:
            self.writer.close()
        finally:
            self.fs.delete_file(self.full)


def _split(batch: pa.RecordBatch, partition_by: list[str]) -> Iterator[tuple[tuple, pa.RecordBatch]]:
    """(partition values, rows without the partition columns) for each partition in ``batch``."""
    if not partition_by:
        yield (), batch
        return
    keys = list(zip(*(batch.column(name).to_pylist() for name in partition_by), strict=True))
    rows: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        rows.setdefault(tuple(partition_value(v) for v in key), []).append(i)
    data = batch.drop_columns(partition_by)
    for key, indices in rows.items():
        yield key, data.take(pa.array(indices, pa.int64()))


def write_task_files(
    batches: Iterable[pa.RecordBatch], *, uri: str, write_id: str, schema: pa.Schema, partition_by: list[str]
) -> list[DataFile]:
    """Write one task's record batches as Parquet files in the table folder (one per partition value).

    Returns the files' descriptions; on any error deletes what it wrote and re-raises. Writes no file
    for a task without rows.
    """
    fs, root = filesystem(uri)
    file_schema = pa.schema([f for f in schema if f.name not in partition_by])
    open_files: dict[tuple, _OpenFile] = {}
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            batch = batch.cast(schema) if batch.schema != schema else batch
            for key, rows in _split(batch, partition_by):
                if key not in open_files:
                    folder = partition_folder(partition_by, list(key))
                    relative = f"{folder}/{_file_name(write_id)}" if folder else _file_name(write_id)
                    open_files[key] = _OpenFile(
                        fs, root, relative, file_schema, dict(zip(partition_by, key, strict=True))
                    )
                open_files[key].write(rows)
        return [f.close() for f in open_files.values()]
    except BaseException:
        for f in open_files.values():
            try:
                f.discard()
            except Exception:  # the original error matters more than a failed clean-up
                pass
        raise


def files_of_write(uri: str, write_id: str) -> list[str]:
    """Full paths of every data file under the table folder that belongs to ``write_id``."""
    fs, root = filesystem(uri)
    prefix = f"part-{write_id}-"
    found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return [
        f.path
        for f in found
        if f.type == pafs.FileType.File
        and f.base_name.startswith(prefix)
        and not f.path[len(root) :].lstrip("/").startswith(LOG_FOLDER)
    ]


def delete_files(uri: str, paths: Iterable[str]) -> None:
    """Delete files by full path (missing files are fine)."""
    fs, _ = filesystem(uri)
    for path in paths:
        if fs.get_file_info(path).type == pafs.FileType.File:
            fs.delete_file(path)
