"""Schema checks before a write, so that a mismatch fails with a message that names the columns."""

from __future__ import annotations

from pyspark.sql.types import ArrayType, DataType, MapType, StructField, StructType


def as_nullable(data_type: DataType) -> DataType:
    """``data_type`` with every field, array element and map value nullable (recursively)."""
    if isinstance(data_type, StructType):
        return StructType([StructField(f.name, as_nullable(f.dataType), True, f.metadata) for f in data_type])
    if isinstance(data_type, ArrayType):
        return ArrayType(as_nullable(data_type.elementType), True)
    if isinstance(data_type, MapType):
        return MapType(as_nullable(data_type.keyType), as_nullable(data_type.valueType), True)
    return data_type


def check_append(data: StructType, table: StructType, *, path: str) -> list[str]:
    """Check that rows with schema ``data`` can be added to a table with schema ``table``.

    Columns are matched by name and must have the same type (nullability aside). Returns the table's
    column order, so the caller can select the DataFrame's columns in that order.
    """
    data_types = {f.name: as_nullable(f.dataType).simpleString() for f in data}
    table_types = {f.name: as_nullable(f.dataType).simpleString() for f in table}
    missing = [name for name in table_types if name not in data_types]
    extra = [name for name in data_types if name not in table_types]
    changed = [
        f"{name}: table {table_types[name]}, data {data_types[name]}"
        for name in table_types
        if name in data_types and data_types[name] != table_types[name]
    ]
    if missing or extra or changed:
        raise ValueError(
            f"Cannot add rows to the Delta table at {path}: the DataFrame's schema does not match the "
            f"table's (missing columns {missing}, extra columns {extra}, changed types {changed}). "
            'Cast or select the columns to match, or write with mode="overwrite" to replace the table.'
        )
    return list(table_types)
