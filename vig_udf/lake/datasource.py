"""The Spark side of a delta-rs write: a Python data source whose tasks write Parquet files.

Spark runs ``LakeWriter.write`` once per task on the executors, with the task's rows as Arrow record
batches; each task writes its own files into the table folder and returns their descriptions. When
every task succeeded, Spark calls ``commit`` once on the driver (in a Python worker process) with all
descriptions, and it makes one Delta commit with delta-rs. When the job fails, Spark calls ``abort``,
which deletes the files, so a failed job leaves neither a commit nor stray files.

Use it through ``vig_udf.lake.write_table``; the format name is ``FORMAT`` and the one option is
``spec`` (a ``WriteSpec`` as JSON).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
from pyspark import cloudpickle
from pyspark.sql.datasource import DataSource, DataSourceArrowWriter, WriterCommitMessage
from pyspark.sql.types import StructType

from vig_udf.lake.commit import WriteSpec, abort_write, commit_write
from vig_udf.lake.files import DataFile, write_task_files
from vig_udf.lake.schema import arrow_schema

FORMAT = "vig_delta_rs"


@dataclass
class TaskFiles(WriterCommitMessage):
    """What one task wrote (no files for a task without rows)."""

    files: list[DataFile]


class LakeWriter(DataSourceArrowWriter):
    """Writes Parquet files on executors; commits them with delta-rs on the driver."""

    def __init__(self, spec: WriteSpec):
        self.spec = spec
        self.schema = arrow_schema(spec.spark_schema)

    def write(self, iterator: Iterator[pa.RecordBatch]) -> TaskFiles:
        files = write_task_files(
            iterator,
            uri=self.spec.uri,
            write_id=self.spec.write_id,
            schema=self.schema,
            partition_by=list(self.spec.partition_by),
        )
        return TaskFiles(files)

    def commit(self, messages: list[TaskFiles | None]) -> None:
        commit_write(self.spec, [f for m in messages if m is not None for f in m.files])

    def abort(self, messages: list[TaskFiles | None]) -> None:
        abort_write(self.spec, [f for m in messages if m is not None for f in m.files])


class LakeDataSource(DataSource):
    """``df.write.format(FORMAT).option("spec", spec.to_json()).mode(...).save()``."""

    @classmethod
    def name(cls) -> str:
        return FORMAT

    def writer(self, schema: StructType, overwrite: bool) -> LakeWriter:
        spec = WriteSpec.from_json(self.options["spec"])
        if overwrite != (spec.mode == "overwrite"):
            raise ValueError(f"Spark save mode (overwrite={overwrite}) does not match the spec's {spec.mode!r}")
        if [f.name for f in schema] != [f.name for f in spec.spark_schema]:
            raise ValueError(f"Columns {schema.fieldNames()} do not match the spec's {spec.spark_schema.fieldNames()}")
        return LakeWriter(spec)


def register_data_source(spark) -> None:
    """Make ``FORMAT`` known to ``spark`` (idempotent).

    Spark pickles the data source class to its Python workers. It goes by value, so that the workers
    rebuild it without importing the ``vig_udf`` package, whose ``__init__`` imports torch (seconds
    for every new worker, on executors and on the driver, for a write that needs only pyarrow).
    """
    cloudpickle.register_pickle_by_value(sys.modules[__package__])
    spark.dataSource.register(LakeDataSource)
