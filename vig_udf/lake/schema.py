"""Schemas: one Spark schema, seen three ways (Spark, Arrow for the Parquet files, Delta for the log).

A Delta schema is serialised exactly like a Spark ``StructType`` (same JSON), so the mapping between
Spark and Delta goes through that JSON and is lossless: arrays, maps, structs, binary, decimals,
``timestamp`` and ``timestamp_ntz`` all keep their type. The Arrow schema of the files is derived from
the same Spark schema, with timestamps in UTC (the only time zone Delta knows).

Like Delta Lake on Spark, tables are created with every field nullable: the DataFrame's nullability
(a literal is "not null", an aggregate is not) is an accident of the query, not a table constraint,
and keeping it would make the next append with a nullable column fail.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pyarrow as pa
from deltalake import Schema as DeltaSchema
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    ByteType,
    DataType,
    DateType,
    IntegerType,
    LongType,
    MapType,
    ShortType,
    StringType,
    StructField,
    StructType,
)

# Types allowed as partition columns: their text form in a folder name is unambiguous.
PARTITION_TYPES = (StringType, IntegerType, LongType, ShortType, ByteType, BooleanType, DateType)
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"  # the folder name Spark and Delta use for a null value


def as_nullable(data_type: DataType) -> DataType:
    """``data_type`` with every field, array element and map value nullable (recursively)."""
    if isinstance(data_type, StructType):
        return StructType([StructField(f.name, as_nullable(f.dataType), True, f.metadata) for f in data_type])
    if isinstance(data_type, ArrayType):
        return ArrayType(as_nullable(data_type.elementType), True)
    if isinstance(data_type, MapType):
        return MapType(as_nullable(data_type.keyType), as_nullable(data_type.valueType), True)
    return data_type


def table_schema(spark_schema: StructType) -> StructType:
    """The schema a table gets from a DataFrame with ``spark_schema``: the same types, all nullable."""
    return as_nullable(spark_schema)  # type: ignore[return-value]


def delta_schema(spark_schema: StructType) -> DeltaSchema:
    """The Delta schema of a Spark schema (the same JSON; raises if Delta cannot store a type)."""
    try:
        return DeltaSchema.from_json(spark_schema.json())
    except Exception as error:
        raise TypeError(
            f"Delta Lake cannot store this schema: {error}. Cast or drop the offending column "
            f"(for example intervals or void columns) before writing. Schema: {spark_schema.simpleString()}"
        ) from error


def spark_schema(schema: DeltaSchema) -> StructType:
    """The Spark schema of a Delta schema."""
    return StructType.fromJson(json.loads(schema.to_json()))


def arrow_schema(spark_schema: StructType) -> pa.Schema:
    """The Arrow schema of the Parquet files for a Spark schema (timestamps in UTC, small offsets)."""
    return to_arrow_schema(spark_schema, timezone="UTC", prefers_large_types=False)


def check_append(data: StructType, table: StructType, *, path: str) -> list[str]:
    """Check that rows with schema ``data`` can be appended to a table with schema ``table``.

    Columns are matched by name and must have the same type (nullability aside). Returns the table's
    column order, so the caller can select the DataFrame's columns in that order.
    """
    data_types = {f.name: as_nullable(f.dataType).simpleString() for f in data}
    table_types = {f.name: f.dataType.simpleString() for f in table}
    missing = [name for name in table_types if name not in data_types]
    extra = [name for name in data_types if name not in table_types]
    changed = [
        f"{name}: table {table_types[name]}, data {data_types[name]}"
        for name in table_types
        if name in data_types and data_types[name] != table_types[name]
    ]
    if missing or extra or changed:
        raise ValueError(
            f"Cannot append to the Delta table at {path}: the DataFrame's schema does not match the "
            f"table's (missing columns {missing}, extra columns {extra}, changed types {changed}). "
            'Cast or select the columns to match, or write with mode="overwrite" to replace the table.'
        )
    return list(table_types)


def check_partition_columns(schema: StructType, partition_by: list[str]) -> None:
    """Raise if a partition column is missing or of a type that cannot name a folder."""
    fields = {f.name: f for f in schema}
    for name in partition_by:
        if name not in fields:
            raise ValueError(f"Partition column {name!r} is not a column; columns: {list(fields)}")
        if not isinstance(fields[name].dataType, PARTITION_TYPES):
            raise TypeError(
                f"Partition column {name!r} has type {fields[name].dataType.simpleString()}; partition by "
                "a string, integer, boolean or date column (cast it first)."
            )
    if len(partition_by) == len(fields):
        raise ValueError("Every column is a partition column; keep at least one data column.")


def partition_value(value) -> str | None:
    """Delta's text form of a partition value (``None`` for null; empty strings are null, as in Spark)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def partition_folder(columns: list[str], values: list[str | None]) -> str:
    """The Hive-style folder of one partition, e.g. ``scorer=abc/split=train`` (escaped like Spark)."""
    return "/".join(
        f"{quote(name, safe='')}={NULL_PARTITION if value is None else quote(value, safe='')}"
        for name, value in zip(columns, values, strict=True)
    )
