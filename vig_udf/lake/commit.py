"""The driver's half of a delta-rs write: one Delta commit for every file the tasks wrote, or none.

``WriteSpec`` is everything the executors and the committer need to know about one write; it travels
to them as JSON in a data source option. ``commit_write`` makes the single commit (creating the table
if needed) and ``abort_write`` deletes a failed write's files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

from deltalake import DeltaTable
from deltalake.transaction import AddAction, CommitProperties, Transaction, create_table_with_add_actions
from pyspark.sql.types import StructType

from vig_udf.lake.files import DataFile, delete_files, files_of_write, filesystem
from vig_udf.lake.schema import delta_schema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriteSpec:
    """One write: where, how, with which schema and metadata.

    ``mode`` is ``"append"``, ``"overwrite"`` or ``"error"`` (create only); ``schema`` is the table
    schema as Spark JSON.
    """

    uri: str
    mode: str
    write_id: str
    schema: str
    partition_by: tuple[str, ...] = ()
    metadata: tuple[tuple[str, str], ...] = ()
    app_id: str | None = None
    app_version: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WriteSpec:
        raw = json.loads(text)
        raw["partition_by"] = tuple(raw["partition_by"])
        raw["metadata"] = tuple(tuple(item) for item in raw["metadata"])
        return cls(**raw)

    @property
    def spark_schema(self) -> StructType:
        return StructType.fromJson(json.loads(self.schema))


def already_committed(uri: str, app_id: str | None, app_version: int | None) -> bool:
    """Whether the table at ``uri`` has app transaction ``app_id`` at ``app_version`` or later."""
    if app_id is None or not DeltaTable.is_deltatable(uri):
        return False
    committed = DeltaTable(uri).transaction_version(app_id)
    return committed is not None and committed >= app_version


def _properties(spec: WriteSpec) -> CommitProperties:
    transactions = [Transaction(spec.app_id, spec.app_version)] if spec.app_id is not None else None
    return CommitProperties(custom_metadata=dict(spec.metadata), app_transactions=transactions)


def _add(file: DataFile) -> AddAction:
    return AddAction(file.path, file.size, file.partition_values, file.modification_time, True, file.stats)


def commit_write(spec: WriteSpec, files: list[DataFile]) -> None:
    """Commit ``files`` as one Delta commit, or delete them if the app transaction is already there.

    Afterwards deletes any other file of this write (from task attempts that failed or lost a race).
    """
    _, root = filesystem(spec.uri)
    written = {f"{root}/{f.path}" for f in files}
    if already_committed(spec.uri, spec.app_id, spec.app_version):
        log.info("App transaction %s %s already in %s: nothing committed", spec.app_id, spec.app_version, spec.uri)
        delete_files(spec.uri, files_of_write(spec.uri, spec.write_id))
        return
    adds = [_add(f) for f in files]
    schema = delta_schema(spec.spark_schema)
    partition_by = list(spec.partition_by)
    if not DeltaTable.is_deltatable(spec.uri):
        mode = "error" if spec.mode == "error" else "append"
        create_table_with_add_actions(
            spec.uri, schema, adds, mode=mode, partition_by=partition_by, commit_properties=_properties(spec)
        )
    else:
        if spec.mode == "error":
            raise FileExistsError(f"A Delta table appeared at {spec.uri} during a create-only write.")
        DeltaTable(spec.uri).create_write_transaction(
            adds, spec.mode, schema, partition_by=partition_by, commit_properties=_properties(spec)
        )
    strays = [path for path in files_of_write(spec.uri, spec.write_id) if path not in written]
    delete_files(spec.uri, strays)


def abort_write(spec: WriteSpec, files: list[DataFile]) -> None:
    """Delete every file of a failed write, unless the write's commit made it into the table."""
    if DeltaTable.is_deltatable(spec.uri):
        in_table = set(DeltaTable(spec.uri).file_uris())
        _, root = filesystem(spec.uri)
        if any(f"{root}/{f.path}" in in_table for f in files):
            log.warning("Write %s failed after its commit landed in %s; keeping its files", spec.write_id, spec.uri)
            return
    delete_files(spec.uri, files_of_write(spec.uri, spec.write_id))
